"""No worker outlives its cluster: on close, on cancellation, on Ctrl-C, and when the parent is killed."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faulty_envs
import psutil
import pytest

from dartflow.tasks.envs.cluster import ClusterClosedError, EnvironmentCluster, EpisodeError

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent

# A parent that opens a cluster, parks one episode in a hung step, and prints its workers' pids.
PARENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, threading
    import faulty_envs
    from dartflow.tasks.envs.cluster import EnvironmentCluster

    async def main():
        async with EnvironmentCluster(
            [(faulty_envs.SCRIPTED, {})], num_workers=2, slots_per_worker=2, step_timeout_s=600,
            shutdown_grace_s=1.0, environment_factory=faulty_envs.make_environment,
        ) as cluster:
            async with cluster.episode(faulty_envs.problem(0)) as episode:
                print(*cluster.worker_pids(), flush=True)
                await episode.step("hang")

    async def never_closed():
        cluster = EnvironmentCluster([(faulty_envs.SCRIPTED, {})], environment_factory=faulty_envs.make_environment)
        await cluster.start()
        print(*cluster.worker_pids(), flush=True)

    if __name__ == "__main__":
        if sys.argv[1] == "main-thread":
            asyncio.run(main())
        elif sys.argv[1] == "never-closed":
            asyncio.run(never_closed())
        else:  # the loop on another thread, as under a task runner: no PDEATHSIG for its workers
            thread = threading.Thread(target=asyncio.run, args=(main(),))
            thread.start()
            thread.join()
    """
)


def start_parent(tmp_path, mode):
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen(
        [sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    line = parent.stdout.readline()
    assert line, f"the parent script failed: {parent.communicate()[1]}"
    return parent, [int(pid) for pid in line.split()]


def wait_until_gone(pids, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_ctrl_c_in_the_parent_closes_the_cluster_and_its_workers(tmp_path):
    parent, workers = start_parent(tmp_path, "main-thread")
    parent.send_signal(signal.SIGINT)
    # Ctrl-C reaches the workers too (same process group) in a terminal; they ignore it.
    for pid in workers:
        os.kill(pid, signal.SIGINT)
    try:
        _, stderr = parent.communicate(timeout=15)
    finally:
        parent.kill()
    assert "KeyboardInterrupt" in stderr
    assert wait_until_gone(workers, timeout_s=2.0)


@pytest.mark.parametrize("mode", ["main-thread", "loop-thread"])
def test_workers_exit_when_their_parent_is_killed(tmp_path, mode):
    parent, workers = start_parent(tmp_path, mode)
    parent.kill()
    parent.wait()
    # the idle worker sees EOF at once; the one inside a step is stopped by PDEATHSIG (spawned from
    # the main thread) or by its parent-pid watcher (polls every 0.5 s)
    assert wait_until_gone(workers, timeout_s=5.0)


def test_a_parent_that_never_closes_its_cluster_still_exits_and_takes_its_workers_along(tmp_path):
    parent, workers = start_parent(tmp_path, "never-closed")
    assert parent.wait(timeout=15) == 0  # multiprocessing's exit hook would wait for them forever
    assert wait_until_gone(workers, timeout_s=2.0)


def test_close_fails_episodes_in_flight_and_cancelling_a_user_of_the_cluster_reaps_its_workers():
    async def scenario():
        cluster = EnvironmentCluster(
            [(faulty_envs.SCRIPTED, {})], num_workers=1, slots_per_worker=1, shutdown_grace_s=0.5,
            environment_factory=faulty_envs.make_environment,
        )
        started = asyncio.Event()
        outcome = {}

        async def user():
            async with cluster:
                outcome["pids"] = cluster.worker_pids()
                async with cluster.episode(faulty_envs.problem(0)) as episode:
                    waiting = asyncio.ensure_future(_open_one(cluster))  # queued: the only slot is taken
                    started.set()
                    try:
                        await episode.step("hang")
                    finally:
                        outcome["queued"] = waiting

        task = asyncio.ensure_future(user())
        await started.wait()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ClusterClosedError):
            await outcome["queued"]
        return outcome["pids"]

    pids = asyncio.run(scenario())
    assert not any(_alive(pid) for pid in pids)


def test_a_request_in_flight_when_the_cluster_closes_fails_with_a_reason():
    async def scenario():
        cluster = EnvironmentCluster(
            [(faulty_envs.SCRIPTED, {})], num_workers=1, slots_per_worker=1, shutdown_grace_s=0.2,
            environment_factory=faulty_envs.make_environment,
        )
        await cluster.start()
        async with cluster.episode(faulty_envs.problem(0)) as episode:
            step = asyncio.ensure_future(episode.step("sleep:5"))
            await asyncio.sleep(0.2)
            await cluster.close()
            with pytest.raises(EpisodeError) as raised:
                await step
        return raised.value, cluster.stats()

    error, stats = asyncio.run(scenario())
    assert error.kind == "crash" and "the environment cluster was closed" in error.reason
    assert stats.crashes == 0 and stats.restarts == 0


async def _open_one(cluster):
    async with cluster.episode(faulty_envs.problem(1)):
        pass

