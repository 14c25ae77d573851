"""Ctrl-C and SIGTERM stop `dartflow train` cleanly; `--resume` finishes the run, training nothing twice.

The end-to-end test signals the run's whole process group, as a terminal's Ctrl-C does (the engine
and the environment workers receive it too). The small tests drive `run_interruptibly` in a child
Python process without any engine.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from test_train_flow import DARTFLOW, small_run

INTERRUPTED = re.compile(r"dartflow: interrupted \(SIGINT\) at version (\d+); resume with: (.+)$")


def read_until(process, marker: str, timeout_s: float) -> list[str]:
    lines, deadline = [], time.time() + timeout_s
    for line in process.stdout:
        lines.append(line)
        if marker in line or time.time() > deadline:
            break
    return lines


def start_train(config, env, *extra: str) -> subprocess.Popen:
    """`dartflow train CONFIG` in its own process group, like a job in a terminal, output piped."""
    return subprocess.Popen(
        [str(DARTFLOW), "train", *extra, str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )


def ctrl_c_at(process: subprocess.Popen, marker: str) -> tuple[str, list, float]:
    """Wait for `marker` in the run's output, send Ctrl-C to its process group, wait for it to end;
    returns (its output, its child processes at the signal, the signal's time)."""
    try:
        output = read_until(process, marker, timeout_s=600)
        assert marker in output[-1], "".join(output)[-3000:]
        processes = psutil.Process(process.pid).children(recursive=True)  # engine, env workers, Prefect API...
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        signalled = time.time()
        output += process.stdout.readlines()
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return "".join(output), processes, signalled


@pytest.mark.slow
def test_ctrl_c_in_bc_then_in_rl_and_two_resumes_finish_the_run_training_nothing_twice(tmp_path):
    """One run stopped twice: in the BC warm-up (resume redoes BC on the same demonstrations), then
    between RL steps (resume continues from the checkpoint the lineage explains)."""
    import yaml
    from mlflow import MlflowClient

    from dartflow.config import load_config
    from dartflow.storage import TrajectoryStore
    from dartflow.tasks.training.checkpoints import list_checkpoints

    steps, bc_steps = 6, 60  # BC steps take ~0.1 s: the first signal lands inside the warm-up
    config, env = small_run(tmp_path, steps)
    small = yaml.safe_load(config.read_text())
    small["training"]["bc_steps"] = bc_steps
    config.write_text(yaml.safe_dump(small))
    run_config = load_config(config)
    demonstrations = small["training"]["bc_demonstrations"]

    # 1. Ctrl-C during BC: it stops between BC steps, before any RL.
    process = start_train(config, env)
    shown, _, _ = ctrl_c_at(process, f"bc warm-up: step 10/{bc_steps}")
    assert process.returncode == 130, shown[-4000:]
    assert "bc warm-up: stopped at step" in shown and f"bc warm-up: {bc_steps} steps" not in shown, shown[-4000:]

    # 2. Resume: BC is redone on the stored demonstrations, then Ctrl-C between RL steps.
    process = start_train(config, env, "--resume")
    shown, processes, signalled = ctrl_c_at(process, "| step 2/")
    assert f"bc warm-up: {bc_steps} steps on {demonstrations} demonstrations" in shown, shown[-4000:]
    assert len(processes) >= 3
    assert process.returncode == 130, shown[-4000:]
    assert time.time() - signalled < 90, shown[-4000:]
    (message,) = [m for m in map(INTERRUPTED.search, shown.splitlines()) if m]
    assert message.group(2) == f"dartflow train {config} --resume"
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, [(p.pid, p.name()) for p in alive]
    store = TrajectoryStore(run_config.store_uri, run_id="e2e")
    assert store.as_of(store.version, where="source = 'demonstration'").num_rows == demonstrations  # written once
    # The latest checkpoint is the version of the last step whose batch the store recorded.
    trained = [v for v in range(bc_steps, bc_steps + steps) if store.lineage(v).num_rows]
    version = int(message.group(1))
    checkpoints = list_checkpoints(run_config.work_dir / "runs" / "e2e" / "checkpoints")
    assert checkpoints[-1][0] == version == trained[-1] + 1
    assert version >= max(int(v) for v in re.findall(r"\[v\s*(\d+) \| step", shown))
    client = MlflowClient(run_config.mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dartflow").experiment_id])
    assert run.info.status == "KILLED"

    # 3. Resume again: the run finishes; every version has its batch, no trajectory trained twice.
    resumed = subprocess.run(
        [str(DARTFLOW), "train", "--resume", str(config)], env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "bc warm-up" not in resumed.stdout  # RL had started: BC is not redone
    store = TrajectoryStore(run_config.store_uri, run_id="e2e")
    consumed = []
    for v in range(bc_steps, bc_steps + steps):
        lineage = store.lineage(v)
        assert lineage.num_rows > 0, f"version {v} has no batch: versions did not continue"
        consumed += lineage["trajectory_id"].to_pylist()
    assert len(consumed) == len(set(consumed))  # no trajectory trained twice
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


# ---- run_interruptibly without an engine -----------------------------------------------------------

RUN = textwrap.dedent(
    """
    import asyncio, subprocess, sys, time
    from dartflow.flows import interrupts

    def step():  # like a training step in its thread: the signal does not cut it off
        time.sleep(1.5)
        print("step done", flush=True)

    async def flow(hang_when_closing):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        print("child", child.pid, flush=True)
        try:
            await asyncio.to_thread(step)
            await asyncio.sleep(600)
        finally:
            interrupts.begin_closing()
            print("settled", await interrupts.wait_for_threads(30), interrupts.requested(), flush=True)
            if hang_when_closing:
                await asyncio.sleep(600)
            child.kill()
            child.wait()

    try:
        interrupts.run_interruptibly(lambda: flow(sys.argv[1] == "hang"))
    except interrupts.RunInterrupted as stopped:
        print("stopped", stopped.reason, flush=True)
        sys.exit(stopped.exit_code)
    """
)


def start_run(tmp_path, mode: str):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    process = subprocess.Popen(
        [sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    child = int(process.stdout.readline().split()[1])
    return process, psutil.Process(child)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_cancels_the_flow_after_the_thread_in_progress_and_exits_128_plus_signal(tmp_path, signum):
    process, child = start_run(tmp_path, "close")
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, output
    name = signal.Signals(signum).name
    assert f"step done\nsettled True {name}\nstopped {name}" in output  # the thread ended before the closing
    assert not child.is_running()


def test_a_second_signal_exits_at_once_and_kills_the_child_processes(tmp_path):
    process, child = start_run(tmp_path, "hang")
    process.send_signal(signal.SIGINT)
    assert read_until(process, "settled", timeout_s=60)[-1].startswith("settled True SIGINT")  # closing hangs
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 130, output
    assert "SIGINT again" in output
    psutil.wait_procs([child], timeout=10)
    assert not child.is_running()


def test_the_resume_command_repeats_mode_config_and_overrides():
    from dartflow.flows.cli import _resume_command, build_parser

    args = build_parser().parse_args(["train", "--mode", "sync", "c.yaml", "training.lr=1e-5"])
    assert _resume_command(args, "e2e") == "dartflow train --mode sync c.yaml training.lr=1e-5 --resume"
    args = build_parser().parse_args(["quickstart", "configs/quickstart.yaml"])  # quickstart picked a free name
    assert _resume_command(args, "quickstart-2") == (
        "dartflow train configs/quickstart.yaml run_name=quickstart-2 --resume"
    )


# ---- the checkpoint an interrupted run keeps ---------------------------------------------------------


class FakeTrainer:
    def __init__(self, root, version):
        self.checkpoint_root, self.version, self.saved = root, version, []

    def save_checkpoint(self):
        self.saved.append(self.version)


class FakeStore:
    def __init__(self, recorded_versions):
        self.recorded = recorded_versions

    def lineage(self, version):
        import pyarrow as pa

        return pa.table({"trajectory_id": ["t"] if version in self.recorded else []})


def state_with_checkpoints(tmp_path, versions, trainer_version, recorded):
    from dartflow.flows.train import RunState
    from dartflow.tasks.training.checkpoints import checkpoint_path

    for version in versions:
        (checkpoint_path(tmp_path, version) / "trainer_state").mkdir(parents=True)
        (checkpoint_path(tmp_path, version) / "trainer_state" / "trainer.json").write_text("{}")
    state = RunState(config=None, run_dir=tmp_path)
    state.trainer, state.store = FakeTrainer(tmp_path, trainer_version), FakeStore(recorded)
    return state


@pytest.mark.parametrize(
    "trainer_version, recorded, kept, saved",
    [
        (5, {2, 3, 4}, 5, []),  # stopped between steps: checkpoint 5 is the trainer
        (6, {2, 3, 4, 5}, 6, [6]),  # step 5 recorded its batch, its checkpoint was not written yet
        (6, {2, 3, 4}, 5, []),  # step 5 ran but recorded nothing: its batch trains after --resume
    ],
)
def test_an_interrupted_run_keeps_the_checkpoint_its_lineage_explains(tmp_path, trainer_version, recorded, kept, saved):
    from dartflow.flows.train import keep_consistent_checkpoint

    state = state_with_checkpoints(tmp_path, [0, 2, 3, 4, 5], trainer_version, recorded)
    assert keep_consistent_checkpoint(state) == kept
    assert state.trainer.saved == saved
