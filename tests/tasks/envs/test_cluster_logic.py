"""The cluster's pure parts, against hand computations: routing, utilization, framing, worker slots."""

import asyncio
import pickle

import faulty_envs
import pytest

from dartflow.tasks.envs.cluster import ClusterClosedError, EnvironmentCluster
from dartflow.tasks.envs.cluster_process import describe_exit
from dartflow.tasks.envs.cluster_routing import WorkerView, choose_slot, environment_key
from dartflow.tasks.envs.cluster_stats import ClusterStats, utilization
from dartflow.tasks.envs.cluster_wire import (
    FrameDecoder,
    RequestDone,
    RequestFailed,
    ResetRequest,
    StepRequest,
    encode_frame,
)
from dartflow.tasks.envs.protocol import StepResult
from dartflow.tasks.envs.worker import EnvironmentSlots, checked_step_result, describe_exception

K, OTHER = "env|{}", "other|{}"


def view(busy, keys, ready=True):
    return WorkerView(ready=ready, slot_busy=busy, slot_keys=keys)


def test_routing_spreads_episodes_to_the_least_busy_worker():
    workers = [view([True, False], [K, None]), view([False, False], [None, None])]
    assert choose_slot(workers, K) == (1, 0)


def test_routing_prefers_a_slot_that_keeps_the_same_environment():
    workers = [view([False, False, False], [None, OTHER, K])]
    assert choose_slot(workers, K) == (0, 2)
    assert choose_slot(workers, "third|{}") == (0, 0)  # empty before evicting another environment's instance


def test_routing_prefers_ready_workers_over_a_restarting_one():
    workers = [view([False], [None], ready=False), view([True, False], [K, K])]
    assert choose_slot(workers, K) == (1, 1)


def test_routing_load_beats_reuse():
    workers = [view([True, False], [K, K]), view([False, False], [None, None])]
    assert choose_slot(workers, K) == (1, 0)


def test_routing_returns_none_when_every_slot_is_busy():
    assert choose_slot([view([True], [K]), view([True, True], [K, None])], K) is None


def test_environment_key_ignores_param_order_and_tells_params_apart():
    assert environment_key("a", {"x": 1, "y": 2}) == environment_key("a", {"y": 2, "x": 1})
    assert environment_key("a", {"x": 1}) != environment_key("a", {"x": 2})
    assert environment_key("a", {}) != environment_key("b", {})


def stats(wall_s, busy, **counters):
    counter_names = "episodes episodes_active resets steps errors exceptions timeouts crashes restarts".split()
    base = dict.fromkeys(counter_names, 0)
    return ClusterStats(wall_s=wall_s, worker_busy_s=tuple(busy), **{**base, **counters})


def test_utilization_is_busy_over_wall_clamped_to_unit_interval():
    assert utilization(0.5, 2.0) == 0.25
    assert utilization(2.1, 2.0) == 1.0  # worker and parent clocks disagree a little
    assert utilization(1.0, 0.0) == 0.0


def test_stats_utilization_per_worker_and_pool():
    snapshot = stats(10.0, [5.0, 1.0])
    assert snapshot.worker_utilization == (0.5, 0.1)
    assert snapshot.utilization == pytest.approx(6.0 / 20.0)


def test_stats_since_gives_the_interval_and_keeps_gauges():
    earlier = stats(10.0, [5.0, 1.0], steps=100, errors=2, episodes_active=7)
    later = stats(14.0, [7.0, 4.0], steps=180, errors=3, episodes_active=3)
    interval = later.since(earlier)
    assert (interval.wall_s, interval.steps, interval.errors, interval.episodes_active) == (4.0, 80, 1, 3)
    assert interval.worker_utilization == (0.5, 0.75)
    assert interval.utilization == pytest.approx(5.0 / 8.0)


def test_stats_metrics_have_env_prefixed_names():
    metrics = stats(4.0, [1.0, 3.0], steps=8, timeouts=1).to_metrics()
    assert metrics["env/steps"] == 8.0
    assert metrics["env/steps_per_s"] == 2.0
    assert metrics["env/timeouts"] == 1.0
    assert metrics["env/utilization"] == 0.5
    assert metrics["env/worker_1/utilization"] == 0.75
    assert all(name.startswith("env/") for name in metrics)


def test_frame_decoder_reassembles_messages_from_any_chunking():
    messages = [StepRequest(1, 0, "a" * 1000), RequestDone(1, 0.5, StepResult("o", 1.0, True, {"x": 1})), "tail"]
    data = b"".join(encode_frame(message) for message in messages)
    for chunk_size in (1, 7, 4096):
        decoder = FrameDecoder()
        decoded = []
        for start in range(0, len(data), chunk_size):
            decoded += decoder.feed(data[start : start + chunk_size])
        assert decoded == messages


def test_checked_step_result_converts_plain_tuples_and_numeric_types():
    class NumpyLikeFloat(float):
        pass

    result = checked_step_result(("obs", NumpyLikeFloat(0.5), 1, {}))
    assert result == StepResult("obs", 0.5, True, {}) and type(result.reward) is float
    with pytest.raises(TypeError, match="observation"):
        checked_step_result((3, 0.0, False, {}))
    with pytest.raises(TypeError, match="StepResult"):
        checked_step_result("obs")


def test_describe_exit_names_signals():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-6) == "killed by SIGABRT"


def test_describe_exception_points_at_the_environment_not_the_worker():
    try:
        faulty_envs.ScriptedEnv().step("raise")
    except ValueError as exc:
        text = describe_exception(exc)
    assert text.startswith("ValueError: scripted failure")
    assert "faulty_envs.py" in text


def reset(slot, environment=faulty_envs.SCRIPTED, params=None, request_id=0, **problem_params):
    params = params or {}
    return ResetRequest(request_id, slot, environment, params, environment_key(environment, params),
                        faulty_envs.problem(0, **problem_params))


def test_worker_slots_reuse_an_instance_for_the_same_environment_and_params():
    slots = EnvironmentSlots(faulty_envs.make_environment)
    built_before = faulty_envs.instances_built
    assert isinstance(slots.handle(reset(0)), RequestDone)
    assert isinstance(slots.handle(reset(0)), RequestDone)
    assert faulty_envs.instances_built == built_before + 1
    slots.handle(reset(0, params={"max_turns": 5}))  # other params: a new instance
    slots.handle(reset(1))  # another slot: its own instance
    assert faulty_envs.instances_built == built_before + 3


def test_worker_slots_turn_exceptions_into_failed_answers_and_drop_the_instance():
    slots = EnvironmentSlots(faulty_envs.make_environment)
    slots.handle(reset(0))
    failed = slots.handle(StepRequest(1, 0, "raise"))
    assert isinstance(failed, RequestFailed) and failed.error.startswith("ValueError: scripted failure")
    after = slots.handle(StepRequest(2, 0, "ok"))
    assert isinstance(after, RequestFailed) and "holds no environment instance" in after.error
    done = slots.handle(StepRequest(3, 1, "ok"))
    assert isinstance(done, RequestFailed)  # slot 1 never reset
    assert isinstance(slots.handle(reset(0, request_id=4, reset="raise")), RequestFailed)


def test_worker_slots_measure_time_inside_the_environment():
    slots = EnvironmentSlots(faulty_envs.make_environment)
    slots.handle(reset(0))
    answer = slots.handle(StepRequest(1, 0, "sleep:0.05"))
    assert isinstance(answer, RequestDone) and 0.05 <= answer.busy_s < 0.5


def test_messages_survive_pickling():
    message = reset(2)
    assert pickle.loads(pickle.dumps(message)) == message


def open_episode(cluster, problem, params=None):
    """Enter and leave `cluster.episode()`: on a cluster never started, past the environment lookup
    this raises ClusterClosedError, which tells that the lookup itself went through."""

    async def enter():
        async with cluster.episode(problem, params):
            pass

    asyncio.run(enter())


def test_an_environment_configured_twice_needs_params_on_the_episode():
    cluster = EnvironmentCluster(
        [("a", {"x": 1}), ("a", {"x": 2}), ("b", {}), ("b", {})], environment_factory=faulty_envs.make_environment
    )
    with pytest.raises(ValueError, match="configured 2 times"):
        open_episode(cluster, faulty_envs.problem(0, environment="a"))
    with pytest.raises(ClusterClosedError):
        open_episode(cluster, faulty_envs.problem(0, environment="a"), params={"x": 2})
    with pytest.raises(ClusterClosedError):  # the same params twice are one configuration
        open_episode(cluster, faulty_envs.problem(0, environment="b"))


def test_cluster_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_workers"):
        EnvironmentCluster([("a", {})], num_workers=0)


def test_episode_for_an_environment_the_cluster_does_not_host_names_what_it_hosts():
    cluster = EnvironmentCluster([("alpha", {}), ("beta", {})], environment_factory=faulty_envs.make_environment)
    with pytest.raises(ValueError, match="not configured with .*alpha, beta"):
        open_episode(cluster, faulty_envs.problem(0, environment="gamma"))


def test_a_bad_environment_fails_at_start_before_any_worker_is_spawned():
    from dartflow.tasks.envs.registry import EnvironmentConfigError

    cluster = EnvironmentCluster([("guess_number", {"no_such_param": 1})])
    with pytest.raises(EnvironmentConfigError, match="no_such_param"):
        asyncio.run(cluster.start())
    assert cluster.worker_pids() == []


def test_cluster_from_config_takes_sizes_and_environments():
    from dartflow.config import load_config

    config = load_config(overrides=["cluster.num_workers=3", "cluster.step_timeout_s=5"])
    cluster = EnvironmentCluster.from_config(config, slots_per_worker=2)
    assert (cluster.num_workers, cluster.slots_per_worker, cluster.step_timeout_s) == (3, 2, 5.0)
    assert cluster.reset_timeout_s == config.cluster.reset_timeout_s


def test_a_factory_that_cannot_reach_the_workers_is_refused_before_anything_starts():
    with pytest.raises(TypeError, match="module-level function"):
        EnvironmentCluster([(faulty_envs.SCRIPTED, {})], environment_factory=lambda name, params: None)
