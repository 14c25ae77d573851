"""The CPU split between the rollout engine and the trainer (tasks/cpu_split.py)."""

import os
import threading

import pytest
import torch

from dartflow.config import ConfigError, load_config
from dartflow.tasks.cpu_split import CpuSplit, engine_bind_env, pinned, plan_cpu_split


def test_auto_gives_a_two_core_box_one_core_each():
    assert plan_cpu_split([0, 1], "auto", "auto", engine_on_cpu=True) == CpuSplit([0], [1])


def test_auto_gives_the_engine_the_larger_half_of_odd_core_counts():
    assert plan_cpu_split([4, 2, 3], "auto", "auto", engine_on_cpu=True) == CpuSplit([2, 3], [4])


def test_auto_pins_nothing_on_one_core_or_for_a_gpu_engine():
    assert plan_cpu_split([0], "auto", "auto", engine_on_cpu=True) == CpuSplit(None, None)
    assert plan_cpu_split(range(16), "auto", "auto", engine_on_cpu=False) == CpuSplit(None, None)


def test_all_means_no_pinning_on_that_side_and_auto_follows_it():
    assert plan_cpu_split([0, 1], "all", "all", engine_on_cpu=True) == CpuSplit(None, None)
    assert plan_cpu_split([0, 1], "all", "auto", engine_on_cpu=True) == CpuSplit(None, None)


def test_an_explicit_side_leaves_the_other_cores_to_auto():
    assert plan_cpu_split([0, 1, 2, 3], [3], "auto", engine_on_cpu=True) == CpuSplit([3], [0, 1, 2])
    assert plan_cpu_split([0, 1, 2, 3], "auto", [0], engine_on_cpu=True) == CpuSplit([1, 2, 3], [0])
    assert plan_cpu_split([0, 1], [0, 1], [1], engine_on_cpu=True) == CpuSplit([0, 1], [1])  # overlap allowed


def test_cores_this_process_may_not_use_are_refused_by_name():
    with pytest.raises(ValueError, match=r"cpu.trainer_cpus: cores \[7\]"):
        plan_cpu_split([0, 1], "auto", [1, 7], engine_on_cpu=True)


def test_the_engine_binding_is_vllms_cpu_list():
    assert engine_bind_env([0, 2]) == {"VLLM_CPU_OMP_THREADS_BIND": "0,2"}
    assert engine_bind_env(None) == {}


def test_pinned_moves_only_the_calling_thread_and_restores_it():
    allowed = os.sched_getaffinity(0)
    one = min(allowed)
    threads_before = torch.get_num_threads()
    seen = {}

    def other_thread():
        seen["other"] = os.sched_getaffinity(0)

    with pinned([one]):
        seen["inside"], seen["torch_threads"] = os.sched_getaffinity(0), torch.get_num_threads()
        thread = threading.Thread(target=other_thread)
        thread.start(), thread.join()
    assert seen["inside"] == {one} and seen["torch_threads"] == 1
    assert seen["other"] == {one}  # a thread started inside inherits the pinning (torch's own threads do)
    assert os.sched_getaffinity(0) == allowed and torch.get_num_threads() == threads_before
    with pinned(None):
        assert os.sched_getaffinity(0) == allowed


def test_config_takes_auto_all_or_core_lists_and_refuses_empty_ones():
    assert load_config(None).cpu.engine_cpus == "auto"
    assert load_config(None, ["cpu.engine_cpus=[0]", "cpu.trainer_cpus=all"]).cpu.engine_cpus == [0]
    with pytest.raises(ConfigError, match="cpu.trainer_cpus"):
        load_config(None, ["cpu.trainer_cpus=[]"])
    with pytest.raises(ConfigError, match="cpu.engine_cpus"):
        load_config(None, ["cpu.engine_cpus=some"])
