"""Released gate capacity: trajectories that can never be trained stop counting against the gate.

Pure accounting by hand first, then the service on in-process fakes: a straggler group that lands
too stale, and a group written in time that the trainer's lineage shows went unconsumed.
"""

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pyarrow as pa
import pytest
from rollout_fakes import FakeCluster, FakeEngine, FakeSink
from transformers import AutoTokenizer

from dartflow.storage import TrajectoryRecord, TurnRecord
from dartflow.tasks.rollout.episode import EpisodeSettings
from dartflow.tasks.rollout.prompts import ChatPrompter
from dartflow.tasks.rollout.sampler import UniformSampler
from dartflow.tasks.rollout.service import RolloutService, min_policy_version
from dartflow.tasks.rollout.staleness import StalenessBound, gate_state, last_trainable_version, settle, too_stale

ENVIRONMENTS = [("guess_number", {"high": 16}, 1.0)]
SETTINGS = EpisodeSettings(max_turns=3, max_new_tokens=8)

# ---- accounting, pure -----------------------------------------------------------------------------


def test_released_trajectories_no_longer_count_against_the_gate():
    bound = StalenessBound(max_staleness=1, batch_size=4)  # capacity at trainer v0: (0 + 1 + 1) * 4 = 8
    assert gate_state(produced=8, trainer_version=0, engine_version=0, bound=bound) == "ahead"
    assert gate_state(produced=8, released=1, trainer_version=0, engine_version=0, bound=bound) == "open"
    assert gate_state(produced=10, released=2, trainer_version=0, engine_version=0, bound=bound) == "ahead"
    # released capacity never opens a gate the engine's lag closed
    assert gate_state(produced=0, released=5, trainer_version=2, engine_version=0, bound=bound) == "behind"


def test_too_stale_counts_what_no_later_trainer_version_may_take():
    assert last_trainable_version(3, 2) == 5
    # k = 1, trainer at v3: versions 0 and 1 are last trainable at v1 and v2 (gone); 2 at v3 (now)
    assert too_stale([0, 1, 2, 3], trainer_version=3, max_staleness=1) == 2
    assert too_stale([0, 1, 2, 3], trainer_version=3, max_staleness=3) == 0
    assert too_stale([5, 5], trainer_version=6, max_staleness=0) == 2
    assert too_stale([], trainer_version=9, max_staleness=0) == 0


def test_settle_releases_the_unconsumed_past_their_last_trainable_version():
    pending = {"a": 0, "b": 1, "c": 2, "d": 3}
    # k = 1, batches through v2 known, "b" among them: "a" (last v1) expired, "b" consumed,
    # "c" (last v3) and "d" (last v4) may still be trained
    assert settle(pending, {"b"}, known_through=2, max_staleness=1) == ({"c": 2, "d": 3}, 1)
    assert settle(pending, {"a", "b"}, known_through=2, max_staleness=1) == ({"c": 2, "d": 3}, 0)
    assert settle(pending, set(), known_through=4, max_staleness=1) == ({}, 4)
    assert settle({}, {"x"}, known_through=4, max_staleness=1) == ({}, 0)


def test_a_records_min_policy_version_is_its_oldest_tokens():
    def turn(low, high):
        return TurnRecord("o", "a", [1], [5], [-0.1], low, high, reward=0.0)

    assert min_policy_version(TrajectoryRecord("p", "g", "e", [turn(3, 3), turn(2, 4)], "done")) == 2
    assert min_policy_version(TrajectoryRecord("p", "g", "e", [], "error", min_policy_version=7)) == 7


# ---- the service ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def prompter(tokenizer):
    return ChatPrompter(tokenizer)


@dataclass
class HoldingCluster(FakeCluster):
    """Holds the first `held` episodes at their first step (their first turn already sampled) until `release`."""

    held: int = 0
    release: asyncio.Event | None = None

    @asynccontextmanager
    async def episode(self, problem, params=None):
        index = len(self.episodes)
        async with super().episode(problem, params) as episode:
            if index < self.held:
                step = episode.step

                async def held_step(action_text):
                    await self.release.wait()
                    return await step(action_text)

                episode.step = held_step
            yield episode


@dataclass
class LineageSink(FakeSink):
    """A sink with a TrajectoryStore's `lineage`: the ids the test's trainer recorded per version."""

    batches: dict[int, list[str]] = field(default_factory=dict)
    reads: list[int] = field(default_factory=list)

    def lineage(self, version):
        self.reads.append(version)
        return pa.table({"trajectory_id": pa.array(self.batches.get(version, []), pa.string())})


def make_service(tokenizer, prompter, *, engine, cluster, sink, hook, k, batch_size, group_size=2):
    return RolloutService(
        engine=engine, cluster=cluster, sink=sink, settings=SETTINGS, prompter=prompter,
        sampler=UniformSampler(ENVIRONMENTS, group_size=group_size, seed=0), concurrent_episodes=4,
        max_staleness=k, batch_size=batch_size, trainer_version=hook, poll_s=0.005,
    )


async def until(condition, timeout_s=10.0):
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.002)


def test_a_straggler_group_that_lands_too_stale_gives_its_capacity_back(tokenizer, prompter):
    # k = 1, batches of 2 = one group. Group A's first turns are sampled at v0, then it is held while
    # the trainer takes B, C, D (v0..v2); at v3 the gate is full with E: (3 + 1 + 1) * 2 = 10 started.
    # A lands at v3 with min_policy_version 0 < 3 - 1: never trainable, so one more group may start.
    # (Before the fix A kept counting: 10 started, the pipeline one group short for the rest of the run.)
    k, batch_size = 1, 2
    engine, sink = FakeEngine(tokenizer, delay_s=0.002), FakeSink()
    trainer = {"version": 0}

    async def train(until_version):
        consumed = set()
        while trainer["version"] < until_version:
            fresh = [r for r in sink.records
                     if r.trajectory_id not in consumed and min_policy_version(r) >= trainer["version"] - k]
            if len(fresh) >= batch_size:
                consumed.update(r.trajectory_id for r in fresh[:batch_size])
                trainer["version"] = engine.policy_version = trainer["version"] + 1  # update swapped in
            await asyncio.sleep(0.002)

    async def scenario():
        cluster = HoldingCluster(held=2, release=asyncio.Event())
        service = make_service(tokenizer, prompter, engine=engine, cluster=cluster, sink=sink,
                               hook=lambda: trainer["version"], k=k, batch_size=batch_size)
        running = asyncio.create_task(service.run())
        await train(until_version=3)
        await until(lambda: service.counters.trajectories_written == 8)  # B, C, D, E
        await asyncio.sleep(0.05)
        assert service.counters.episodes_started == 10 and service._gate.state == "ahead"
        assert service.released == 0
        cluster.release.set()
        await until(lambda: service.counters.trajectories_written >= 10)  # A, too stale
        await until(lambda: service.counters.episodes_started == 12, timeout_s=2.0)  # F
        await asyncio.sleep(0.05)
        assert service.counters.episodes_started == 12 and service._gate.state == "ahead"
        service.stop()
        await running
        return service

    service = asyncio.run(asyncio.wait_for(scenario(), 20.0))
    assert service.released == 2 and service.metrics()["rollout/too_stale"] == 2
    versions = [min_policy_version(r) for r in sink.records]
    assert versions[8:10] == [0, 0] and versions[10:] == [3, 3]  # A; then F, fresh


@pytest.mark.parametrize("trainer_moves_to, started", [(1, 10), (2, 14)])
def test_a_group_the_trainer_passed_over_is_released_once_the_trainer_moves_past_its_version(
    tokenizer, prompter, trainer_moves_to, started
):
    # k = 0, batches of 4, groups of 2: groups A and A' start at v0 (capacity 4) and land in time.
    # The trainer records only A for v0 and moves on (the engine too). v0's recorded batch is final,
    # so A' can never be trained: released at once, and the capacity of (version + 1) * 4 counted
    # lets `started` begin: 10 at v1 (8 if released a version later: with k = 0 the gate then held A'
    # exactly while the trainer waited for its v1 batch), 14 at v2 (12 without the release).
    # A, consumed, still counts.
    engine, sink = FakeEngine(tokenizer, delay_s=0.002), LineageSink()
    trainer = {"version": 0}

    async def scenario():
        service = make_service(tokenizer, prompter, engine=engine, cluster=FakeCluster(), sink=sink,
                               hook=lambda: trainer["version"], k=0, batch_size=4)
        running = asyncio.create_task(service.run())
        await until(lambda: service.counters.trajectories_written == 4 and service._gate.state == "ahead")
        assert service.released == 0 and sink.reads == []  # both written in time (last trainable v0)
        first = sink.records[0].group_id
        sink.batches[0] = [r.trajectory_id for r in sink.records if r.group_id == first]
        trainer["version"] = engine.policy_version = trainer_moves_to
        await until(lambda: service.counters.episodes_started == started, timeout_s=2.0)
        await asyncio.sleep(0.05)
        assert service.counters.episodes_started == started and service._gate.state == "ahead"
        service.stop()
        await running
        return service

    service = asyncio.run(asyncio.wait_for(scenario(), 20.0))
    # At v2, v1 is never recorded here: it is read again at most every LINEAGE_RETRY_S, not at every poll.
    assert service.released == 2 and sink.reads[0] == 0
    assert set(sink.reads) <= set(range(trainer_moves_to)) and len(sink.reads) <= 4
    if trainer_moves_to == 1:
        assert sink.reads == [0]
