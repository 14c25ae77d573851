"""The cluster with real worker processes: failures end episodes, never the pool.

One cluster serves the whole module (spawning workers costs ~0.5 s each); its event loop is a
module-scoped asyncio.Runner, so it only advances while a test runs. Every test starts from a pool
whose workers are all ready and idle, and leaves it so.
"""

import asyncio
import time

import faulty_envs
import psutil
import pytest

from dartflow.tasks.envs.cluster import EnvironmentCluster, EpisodeError

pytestmark = pytest.mark.slow

STEP_TIMEOUT_S = 1.0
RESET_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def runner():
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def cluster(runner):
    before = {child.pid for child in child_processes()}
    cluster = EnvironmentCluster(
        [(faulty_envs.SCRIPTED, {"max_turns": 3})],
        num_workers=2,
        slots_per_worker=100,
        step_timeout_s=STEP_TIMEOUT_S,
        reset_timeout_s=RESET_TIMEOUT_S,
    )  # the default factory: the registry, which resolves the import path inside each worker
    runner.run(cluster.start())
    yield cluster
    runner.run(cluster.close())
    left = [child for child in child_processes() if child.pid not in before]
    assert left == [], f"worker processes outlived the cluster: {left}"


def child_processes():
    """Our child processes, less multiprocessing's resource tracker (one per parent, started by the
    first spawn; it lives as long as the parent and exits when the parent does)."""
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                children.append(child)
        except psutil.NoSuchProcess:
            pass  # exited while we looked
    return children


@pytest.fixture
def run(runner, cluster):
    """Run a test coroutine on the cluster's loop, with every worker ready before and after."""

    def run_on_cluster(coroutine):
        runner.run(all_workers_ready(cluster))
        result = runner.run(coroutine)
        runner.run(all_workers_ready(cluster))
        return result

    return run_on_cluster


async def all_workers_ready(cluster, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while None in cluster.worker_pids() or cluster.stats().episodes_active:
        assert time.monotonic() < deadline, f"pool did not recover: {cluster.worker_pids()}"
        await asyncio.sleep(0.02)


async def play(cluster, index=0, actions=("ok", "ok", "ok")):
    async with cluster.episode(faulty_envs.problem(index)) as episode:
        return episode.observation, [await episode.step(action) for action in actions]


def test_an_episode_gets_the_reset_observation_and_step_results(run, cluster):
    before = cluster.stats()
    observation, results = run(play(cluster, 7))
    assert observation.startswith("start scripted/train/7")
    assert [result.observation for result in results] == ["ok 1", "ok 2", "ok 3"]
    assert [result.done for result in results] == [False, False, True]
    assert results[-1].info == {"success": True}
    counted = cluster.stats().since(before)
    assert (counted.episodes, counted.resets, counted.steps, counted.errors) == (1, 1, 3, 0)


def test_consecutive_episodes_reuse_the_environment_instance(run, cluster):
    async def two_episodes():
        places = []
        for index in range(2):
            async with cluster.episode(faulty_envs.problem(index)) as episode:
                places.append((episode.worker_index, episode.slot, episode.observation.split("built=")[1]))
        return places

    first, second = run(two_episodes())
    assert first == second  # same worker, same slot, no new instance built


def test_an_exception_in_a_step_is_an_episode_error_and_the_worker_goes_on(run, cluster):
    before = cluster.stats()

    async def raising_episode():
        async with cluster.episode(faulty_envs.problem(0)) as episode:
            pid = int((await episode.step("pid")).observation)
            with pytest.raises(EpisodeError) as raised:
                await episode.step("raise")
            with pytest.raises(EpisodeError) as again:  # the episode stays failed; nothing is sent
                await episode.step("ok")
            return pid, episode.worker_index, raised.value, again.value

    pid, worker_index, error, again = run(raising_episode())
    assert error.kind == "exception" and again is error
    assert "ValueError: scripted failure" in error.reason and "step 2 of scripted/train/0" in error.reason
    assert cluster.worker_pids()[worker_index] == pid
    counted = cluster.stats().since(before)
    assert (counted.exceptions, counted.errors, counted.restarts, counted.crashes) == (1, 1, 0, 0)


def test_an_exception_in_reset_fails_the_episode_on_entry(run, cluster):
    async def failing_reset():
        async with cluster.episode(faulty_envs.problem(0, reset="raise")):
            pass

    with pytest.raises(EpisodeError) as raised:
        run(failing_reset())
    assert raised.value.kind == "exception" and "cannot reset scripted/train/0" in raised.value.reason


def test_a_hung_step_times_out_the_worker_is_replaced_and_its_other_episodes_fail(run, cluster):
    before = cluster.stats()
    pids_before = cluster.worker_pids()

    async def hang_next_to_others():
        async with cluster.episode(faulty_envs.problem(1)) as hung, cluster.episode(
            faulty_envs.problem(2)
        ) as elsewhere, cluster.episode(faulty_envs.problem(3)) as neighbour:
            assert hung.worker_index == neighbour.worker_index != elsewhere.worker_index
            started = time.monotonic()
            with pytest.raises(EpisodeError) as timed_out:
                await hung.step("hang")
            waited = time.monotonic() - started
            with pytest.raises(EpisodeError) as lost:
                await neighbour.step("ok")
            still_fine = await elsewhere.step("ok")
            return hung.worker_index, timed_out.value, waited, lost.value, still_fine

    worker_index, timed_out, waited, lost, still_fine = run(hang_next_to_others())
    assert timed_out.kind == "timeout" and "ran past its 1 s timeout" in timed_out.reason
    assert STEP_TIMEOUT_S <= waited < STEP_TIMEOUT_S + 1.0
    assert lost.kind == "crash" and "which was lost" in lost.reason and "timeout" in lost.reason
    assert still_fine.observation == "ok 1"
    assert not psutil.pid_exists(pids_before[worker_index]) or _is_zombie(pids_before[worker_index])
    assert cluster.worker_pids()[worker_index] != pids_before[worker_index]
    counted = cluster.stats().since(before)
    assert (counted.timeouts, counted.restarts, counted.crashes, counted.errors) == (1, 1, 0, 2)
    assert run(play(cluster))[1][-1].done  # the pool serves new episodes


def test_a_hung_reset_times_out(run, cluster):
    async def hung_reset():
        async with cluster.episode(faulty_envs.problem(0, reset="hang")):
            pass

    with pytest.raises(EpisodeError) as raised:
        run(hung_reset())
    assert raised.value.kind == "timeout" and "reset of scripted/train/0" in raised.value.reason


@pytest.mark.parametrize(
    "action, described",
    [("exit", "exit code 3"), ("abort", "SIGABRT"), ("sigkill", "SIGKILL"), ("systemexit", "SystemExit: 7")],
)
def test_a_worker_that_dies_is_replaced_and_the_pool_keeps_serving(run, cluster, action, described):
    before = cluster.stats()

    async def dying_episode():
        async with cluster.episode(faulty_envs.problem(0)) as episode:
            with pytest.raises(EpisodeError) as raised:
                await episode.step(action)
            return raised.value

    error = run(dying_episode())
    assert error.kind == "crash" and "died while running the step 1 of scripted/train/0" in error.reason
    assert described in error.reason
    counted = cluster.stats().since(before)
    assert (counted.crashes, counted.restarts, counted.errors, counted.timeouts) == (1, 1, 1, 0)
    assert run(play(cluster))[1][-1].done


def test_queueing_behind_other_episodes_does_not_count_against_the_step_timeout(run, cluster):
    async def two_slow_steps_on_one_worker():
        async with cluster.episode(faulty_envs.problem(1)) as first, cluster.episode(
            faulty_envs.problem(2)
        ), cluster.episode(faulty_envs.problem(3)) as third:
            assert first.worker_index == third.worker_index
            # 0.7 s each, one after the other: the second answers 1.4 s after it was sent
            return await asyncio.gather(first.step("sleep:0.7"), third.step("sleep:0.7"))

    assert [result.observation for result in run(two_slow_steps_on_one_worker())] == ["ok 1", "ok 1"]


def test_slow_steps_on_different_workers_overlap_and_count_as_busy_time(run, cluster):
    before = cluster.stats()

    async def parallel_slow_steps():
        async with cluster.episode(faulty_envs.problem(1)) as first, cluster.episode(faulty_envs.problem(2)) as second:
            assert first.worker_index != second.worker_index
            started = time.monotonic()
            await asyncio.gather(first.step("sleep:0.4"), second.step("sleep:0.4"))
            return time.monotonic() - started

    assert run(parallel_slow_steps()) < 0.75
    busy = cluster.stats().since(before).worker_busy_s
    assert all(0.4 <= seconds < 0.6 for seconds in busy)


def test_a_cancelled_caller_leaves_its_slot_usable(run, cluster):
    async def cancel_mid_step():
        async with cluster.episode(faulty_envs.problem(0)) as episode:
            slot = (episode.worker_index, episode.slot)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(episode.step("sleep:0.3"), 0.05)
        # the same slot again: its reset waits behind the abandoned step, in order
        async with cluster.episode(faulty_envs.problem(1)) as episode:
            assert (episode.worker_index, episode.slot) == slot
            return (await episode.step("ok")).observation

    assert run(cancel_mid_step()) == "ok 1"


def test_more_concurrent_episodes_than_slots_all_complete(run, cluster):
    before = cluster.stats()
    most_active = 0

    async def watched(index):
        nonlocal most_active
        async with cluster.episode(faulty_envs.problem(index)) as episode:
            most_active = max(most_active, cluster.stats().episodes_active)
            return [await episode.step("ok") for _ in range(3)]

    async def many():  # 250 callers at once for 2 x 100 slots: 50 wait for a free slot
        return await asyncio.gather(*(watched(index) for index in range(250)))

    outcomes = run(many())
    assert all(results[-1].done for results in outcomes)
    assert most_active == 200
    counted = cluster.stats().since(before)
    assert (counted.episodes, counted.resets, counted.steps, counted.errors) == (250, 250, 750, 0)
    assert counted.episodes_active == 0
    assert 0 < counted.utilization <= 1


def _is_zombie(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stepping_an_episode_after_it_ended_is_refused(run, cluster):
    async def escape():
        async with cluster.episode(faulty_envs.problem(0)) as episode:
            pass
        return episode

    episode = run(escape())
    with pytest.raises(RuntimeError, match="has ended"):
        run(episode.step("ok"))


def test_a_built_in_environment_runs_in_the_pool(run, cluster):
    from dartflow.tasks.envs.registry import make_problem_source

    problem = make_problem_source("guess_number").problem("train", 3)

    async def binary_search():
        low, high = problem.params["low"], problem.params["high"]
        # params= hosts an environment the cluster was not configured with
        async with cluster.episode(problem, params={}) as episode:
            while True:
                guess = (low + high) // 2
                result = await episode.step(str(guess))
                if result.done:
                    return result
                low, high = (guess + 1, high) if "higher" in result.observation else (low, guess - 1)

    result = run(binary_search())
    assert result.reward == 1.0 and result.info.get("success") is True


def test_a_name_registered_in_the_parent_reaches_the_workers_as_its_import_path(run, cluster):
    from dartflow.tasks.envs.registry import register_environment

    register_environment("cluster_test_scripted")(faulty_envs.ScriptedEnv)  # the workers never ran this
    problem = faulty_envs.problem(0, environment="cluster_test_scripted")

    async def episode_of_registered_name():
        async with cluster.episode(problem, params={"max_turns": 1}) as episode:
            return await episode.step("ok")

    assert run(episode_of_registered_name()).done
