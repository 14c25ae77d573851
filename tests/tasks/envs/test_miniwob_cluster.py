"""miniwob:<task> in the environment cluster, configured from a run config: episodes play, a crashed
browser ends only its episode, a hung browser's worker is killed and replaced with the browser
reaped, and no browser process outlives the pool.

One cluster (one worker, two slots) serves the module, on a module-scoped asyncio.Runner; every test
starts and ends with the worker ready and idle.
"""

import asyncio
import signal
import time

import psutil
import pytest

from dartflow.tasks.envs.cluster import EnvironmentCluster, EpisodeError
from dartflow.tasks.envs.miniwob_browser import SCRATCH_PREFIX
from dartflow.tasks.envs.miniwob_demos import next_action
from dartflow.tasks.envs.registry import make_problem_source

pytestmark = pytest.mark.slow

TASK = "click-button"
STEP_TIMEOUT_S = 3.0
CONFIG = f"""
environments:
  - name: miniwob:{TASK}
    params: {{max_turns: 3}}
cluster: {{num_workers: 1, slots_per_worker: 2, step_timeout_s: {STEP_TIMEOUT_S}, reset_timeout_s: 30}}
"""
SEEN_BROWSER_PIDS: set[int] = set()  # every browser process any test saw, checked after close


@pytest.fixture(scope="module")
def runner():
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def problems():
    return make_problem_source(f"miniwob:{TASK}", {"max_turns": 3})


@pytest.fixture(scope="module")
def cluster(runner, tmp_path_factory):
    from dartflow.config import load_config

    path = tmp_path_factory.mktemp("miniwob") / "config.yaml"
    path.write_text(CONFIG)
    cluster = EnvironmentCluster.from_config(load_config(path))
    runner.run(cluster.start())
    yield cluster
    SEEN_BROWSER_PIDS.update(browser_processes(cluster))
    runner.run(cluster.close())
    assert wait_until_gone(SEEN_BROWSER_PIDS) == set(), "browser processes outlived the cluster"
    marked = [p.pid for p in psutil.process_iter(["cmdline", "status"])
              if p.info["status"] != psutil.STATUS_ZOMBIE and SCRATCH_PREFIX in " ".join(p.info["cmdline"] or [])]
    assert marked == [], f"Chromium processes outlived the cluster: {marked}"


@pytest.fixture
def run(runner, cluster):
    def run_on_cluster(coroutine):
        runner.run(worker_ready(cluster))
        result = runner.run(coroutine)
        runner.run(worker_ready(cluster))
        return result

    return run_on_cluster


async def worker_ready(cluster, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while None in cluster.worker_pids() or cluster.stats().episodes_active:
        assert time.monotonic() < deadline, f"pool did not recover: {cluster.worker_pids()}"
        await asyncio.sleep(0.05)


def browser_processes(cluster) -> dict[int, psutil.Process]:
    """The worker's descendants: chromedriver, Chromium's processes, the reapers."""
    (pid,) = cluster.worker_pids()
    return {child.pid: child for child in psutil.Process(pid).children(recursive=True)}


def chromium_main(processes) -> list[psutil.Process]:
    return [
        p for p in processes.values()
        if p.name() == "chromium" and not any(argument.startswith("--type=") for argument in p.cmdline())
    ]


def alive(pids) -> set[int]:
    running = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:  # PID 1 reaps zombies in its own time
                running.add(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def wait_until_gone(pids, timeout_s=10.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


async def scripted_episode(cluster, problem):
    async with cluster.episode(problem) as episode:
        result = await episode.step(next_action(TASK, episode.observation))
        return episode.worker_index, result


def test_a_scripted_episode_through_the_cluster_earns_the_checkers_reward(run, cluster, problems):
    _, result = run(scripted_episode(cluster, problems.problem("train", 5)))
    assert (result.reward, result.done, result.info["success"]) == (1.0, True, True)


def test_a_crashed_browser_ends_its_episode_and_the_next_episode_gets_a_new_browser(run, cluster, problems):
    async def crash_then_play():
        async with cluster.episode(problems.problem("train", 0)) as episode:
            before = browser_processes(cluster)
            for process in chromium_main(before):
                process.send_signal(signal.SIGKILL)
            with pytest.raises(EpisodeError) as crashed:
                await episode.step(next_action(TASK, episode.observation))
        _, result = await scripted_episode(cluster, problems.problem("train", 1))
        return before, crashed.value, result

    worker_pid = cluster.worker_pids()[0]
    before, error, result = run(crash_then_play())
    SEEN_BROWSER_PIDS.update(before)
    assert error.kind == "exception" and "BrowserError" in error.reason and "the browser failed during step 1" in error.reason
    assert result.info["success"] and cluster.worker_pids() == [worker_pid]  # same worker, new browser
    assert wait_until_gone(before) == set()  # the crashed browser's other processes were killed


def test_a_hung_browser_times_out_its_worker_the_replacement_plays_and_the_old_browser_is_reaped(run, cluster, problems):
    async def hang_then_play():
        async with cluster.episode(problems.problem("train", 2)) as episode:
            before = browser_processes(cluster)
            for process in chromium_main(before):
                process.send_signal(signal.SIGSTOP)  # alive but answering nothing
            with pytest.raises(EpisodeError) as hung:
                await episode.step(next_action(TASK, episode.observation))
        await worker_ready(cluster)
        _, result = await scripted_episode(cluster, problems.problem("train", 3))
        return before, hung.value, result

    worker_pid = cluster.worker_pids()[0]
    restarts = cluster.stats().restarts
    before, error, result = run(hang_then_play())
    SEEN_BROWSER_PIDS.update(before)
    assert error.kind == "timeout" and f"{STEP_TIMEOUT_S:g}" in error.reason
    assert cluster.worker_pids() != [worker_pid] and cluster.stats().restarts == restarts + 1
    assert result.info["success"]
    assert wait_until_gone(before) == set()  # the killed worker's reaper took its browser down
