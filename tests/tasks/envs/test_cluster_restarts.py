"""A worker that cannot start is retried with a back-off; the episodes sent to it fail, not hang."""

import asyncio
import time

import faulty_envs
import pytest

from dartflow.tasks.envs.cluster import EnvironmentCluster, EpisodeError

pytestmark = pytest.mark.slow


def test_a_replacement_that_cannot_start_fails_its_episodes_and_is_retried_until_it_can(monkeypatch):
    async def scenario():
        async with EnvironmentCluster(
            [(faulty_envs.SCRIPTED, {})], num_workers=1, slots_per_worker=2,
            environment_factory=faulty_envs.make_environment,
        ) as cluster:
            async with cluster.episode(faulty_envs.problem(0)) as episode:
                monkeypatch.setenv(faulty_envs.BROKEN_IN_WORKERS, "1")  # replacements now die at start
                with pytest.raises(EpisodeError):
                    await episode.step("sigkill")
            with pytest.raises(EpisodeError) as refused:  # routed to the replacement, which dies
                async with cluster.episode(faulty_envs.problem(1)):
                    pass
            await asyncio.sleep(1.0)  # a few attempts, 0.5 s then 1 s apart
            attempts = cluster.stats().restarts
            monkeypatch.delenv(faulty_envs.BROKEN_IN_WORKERS)
            deadline = time.monotonic() + 15
            while cluster.worker_pids() == [None]:
                assert time.monotonic() < deadline, "the worker never came back"
                await asyncio.sleep(0.05)
            async with cluster.episode(faulty_envs.problem(2)) as episode:
                result = await episode.step("ok")
            return refused.value, attempts, cluster.stats(), result

    refused, attempts, stats, result = asyncio.run(scenario())
    assert refused.kind == "crash" and "could not start" in refused.reason
    assert "died before it was ready (exit code 1)" in refused.reason
    assert 2 <= attempts <= 5  # backed off: not a tight respawn loop
    assert stats.restarts >= attempts and result.observation == "ok 1"
