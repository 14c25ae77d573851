"""The rollout service on in-process fakes: concurrency, group streaming, the staleness gate, requeues.

The same service on the real engine, cluster and store: test_service_engine.py.
"""

import asyncio

import pyarrow as pa
import pytest
from rollout_fakes import FakeCluster, FakeEngine, FakeSink
from transformers import AutoTokenizer

from dartflow.tasks.rollout.episode import EpisodeSettings
from dartflow.storage import TrajectoryRecord, TurnRecord
from dartflow.tasks.rollout.metrics import OccupancyClock, RolloutCounters, rollout_metrics
from dartflow.tasks.rollout.prompts import ChatPrompter
from dartflow.tasks.rollout.sampler import ListSampler, UniformSampler
from dartflow.tasks.rollout.service import RolloutService
from dartflow.tasks.rollout.staleness import LineageTrainerVersion, StalenessBound, gate_state, produced_capacity

ENVIRONMENTS = [("guess_number", {"high": 16}, 1.0)]
SETTINGS = EpisodeSettings(max_turns=3, max_new_tokens=8)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def prompter(tokenizer):
    return ChatPrompter(tokenizer)


def make_service(tokenizer, prompter, *, engine=None, sink=None, group_size=2, **kwargs):
    engine = engine or FakeEngine(tokenizer, delay_s=0.002)
    kwargs.setdefault("sampler", UniformSampler(ENVIRONMENTS, group_size=group_size, seed=0))
    return RolloutService(
        engine=engine, cluster=FakeCluster(), sink=sink if sink is not None else FakeSink(),
        settings=SETTINGS, prompter=prompter, **kwargs,
    )


def run(coroutine, timeout_s=20.0):
    return asyncio.run(asyncio.wait_for(coroutine, timeout_s))


async def until(condition, timeout_s=10.0):
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.002)


# ---- the gate, pure ---------------------------------------------------------------------------


def test_capacity_is_k_plus_one_batches_ahead_of_the_trainer():
    bound = StalenessBound(max_staleness=2, batch_size=8)
    assert produced_capacity(0, bound) == 24
    assert produced_capacity(5, bound) == 64
    assert produced_capacity(0, StalenessBound(0, 8)) == 8  # k = 0: one batch at a time (synchronous)


def test_gate_closes_ahead_of_the_trainer_and_behind_it():
    bound = StalenessBound(max_staleness=1, batch_size=4)
    assert gate_state(produced=7, trainer_version=0, engine_version=0, bound=bound) == "open"
    assert gate_state(produced=8, trainer_version=0, engine_version=0, bound=bound) == "ahead"
    assert gate_state(produced=8, trainer_version=1, engine_version=0, bound=bound) == "open"
    assert gate_state(produced=0, trainer_version=2, engine_version=0, bound=bound) == "behind"
    assert gate_state(produced=0, trainer_version=2, engine_version=1, bound=bound) == "open"
    with pytest.raises(ValueError):
        StalenessBound(max_staleness=-1, batch_size=4)


def test_lineage_hook_is_one_past_the_newest_consumed_version():
    class Store:
        consumed = 0

        def lineage(self, version):
            return pa.table({"trajectory_id": ["t"] * (version < self.consumed)})

    store = Store()
    hook = LineageTrainerVersion(store, refresh_s=0.0)
    assert hook() == 0
    store.consumed = 3
    assert hook() == 3
    cached = LineageTrainerVersion(store, refresh_s=60.0)
    assert cached() == 3
    store.consumed = 5
    assert cached() == 3 and hook() == 5


def test_occupancy_clock_integrates_the_level():
    clock = OccupancyClock()
    clock.set(0, 0.0)
    clock.set(2, 1.0)  # idle 0..1
    clock.set(1, 2.0)  # 2 slots for 1 s
    clock.advance(4.0)  # 1 slot for 2 s
    assert (clock.idle_seconds, clock.level_seconds) == (1.0, 4.0)


def test_rollout_metrics_by_hand():
    def turn(tokens, reward, versions=(3, 3)):
        return TurnRecord("o", "a", [1], [5] * tokens, [-0.1] * tokens, *versions, reward=reward, generation_seconds=0.5)

    counters = RolloutCounters()
    counters.add_trajectory(TrajectoryRecord("p", "g", "e", [turn(4, 0.0), turn(6, 1.0, (3, 4))], "done", success=True))
    counters.add_trajectory(TrajectoryRecord("p", "g", "e", [turn(10, 0.0)], "truncated"))
    counters.add_interrupted()
    clock = OccupancyClock(level=0, since=0.0)
    clock.set(2, 1.0)
    clock.advance(5.0)  # idle 1 s, then 2 episodes for 4 s
    metrics = rollout_metrics(counters, clock, wall_s=5.0, concurrent_episodes=4, policy_version=4, last_swap_s=0.02)
    expected = {
        "tokens_per_s": 20 / 5, "tokens_per_busy_s": 20 / 4, "episodes": 2, "turns_per_episode": 1.5,
        "success_rate": 0.5, "reward_mean": 0.5, "turns_spanning_versions": 1, "requeued": 1, "generation_s": 1.5,
        "finish/done": 1, "finish/truncated": 1, "finish/interrupted": 1, "finish/error": 0,
        "idle_fraction": 0.2, "slot_utilization": 8 / 20, "policy_version": 4, "swap_s": 0.02,
    }
    assert {name: metrics[f"rollout/{name}"] for name in expected} == pytest.approx(expected)
    assert "rollout/trainer_version" not in metrics


# ---- the service --------------------------------------------------------------------------------


def test_n_trajectories_land_as_whole_groups_within_the_concurrency_limit(tokenizer, prompter):
    engine = FakeEngine(tokenizer, delay_s=0.002)
    service = make_service(tokenizer, prompter, engine=engine, group_size=3, concurrent_episodes=4, run_id="r")
    counters = run(service.run(num_trajectories=20))
    records = service.sink.records
    assert len(records) == 20 == counters.trajectories_written == len(service.written_ids)
    assert sorted(len(group) for group in service.sink.groups) == [2] + [3] * 6  # the last group cut to fit
    for group in service.sink.groups:
        assert len({r.group_id for r in group}) == 1 and len({r.problem_id for r in group}) == 1
        assert sorted(r.metadata["member"] for r in group) == list(range(len(group)))
        assert all(r.metadata["group_size"] == len(group) and r.run_id == "r" for r in group)
    assert len({group[0].group_id for group in service.sink.groups}) == 7
    assert engine.max_in_flight <= 4 and service.cluster.active == 0
    metrics = service.metrics()
    assert metrics["rollout/episodes"] == 20  # "7" every turn: done when it is the secret, else truncated
    assert metrics["rollout/finish/truncated"] + metrics["rollout/finish/done"] == 20
    assert metrics["rollout/tokens_per_s"] > 0 and 0 <= metrics["rollout/idle_fraction"] < 0.5
    assert 0 < metrics["rollout/slot_utilization"] <= 1
    assert all(name.startswith("rollout/") for name in metrics)
    service.close()


def test_groups_are_written_as_soon_as_they_end_not_at_the_end_of_the_run(tokenizer, prompter):
    started_when_written = []

    class Sink(FakeSink):
        def append(self, records):
            started_when_written.append(service.counters.episodes_started)
            return super().append(records)

    service = make_service(tokenizer, prompter, sink=Sink(), group_size=2, concurrent_episodes=2)
    run(service.run(num_trajectories=16))
    assert len(started_when_written) == 8 and started_when_written[0] <= 4


def test_the_service_stops_when_the_sampler_is_exhausted(tokenizer, prompter):
    problems = UniformSampler(ENVIRONMENTS, group_size=1, seed=3)
    sampler = ListSampler([problems.next_group().problem for _ in range(3)], group_size=2, params={"high": 16})
    service = make_service(tokenizer, prompter, sampler=sampler)
    counters = run(service.run())
    assert counters.trajectories_written == 6 and counters.groups_written == 3


def test_interrupted_episodes_are_run_again_and_only_the_rerun_is_written(tokenizer, prompter):
    engine = FakeEngine(tokenizer, delay_s=0.002)
    engine.interrupting = True
    service = make_service(tokenizer, prompter, engine=engine, group_size=2, concurrent_episodes=4)

    async def swap_then_serve():
        running = asyncio.create_task(service.run(num_trajectories=8))
        await until(lambda: service.counters.requeued >= 4)
        engine.policy_version, engine.interrupting = 1, False  # the swap is over
        return await running

    counters = run(swap_then_serve())
    records = service.sink.records
    assert counters.requeued >= 4 and len(records) == 8 == counters.trajectories_written
    assert all(r.finish_reason != "interrupted" for r in records)
    rerun = [r for r in records if r.metadata["attempt"] > 0]
    assert rerun and all(t.min_policy_version == 1 for r in rerun for t in r.turns)
    assert service.metrics()["rollout/finish/interrupted"] == counters.requeued


def test_staleness_gate_pauses_new_groups_until_the_trainer_catches_up(tokenizer, prompter):
    trainer = {"version": 0}
    engine = FakeEngine(tokenizer, delay_s=0.002)
    service = make_service(
        tokenizer, prompter, engine=engine, group_size=2, concurrent_episodes=4,
        max_staleness=1, batch_size=4, trainer_version=lambda: trainer["version"], poll_s=0.005,
    )

    async def scenario():
        running = asyncio.create_task(service.run(num_trajectories=16))
        await until(lambda: service.counters.trajectories_written == 8)  # (0 + 1 + 1) * 4
        await asyncio.sleep(0.1)
        assert service.counters.episodes_started == 8 and len(service.sink.records) == 8
        assert service._gate.state == "ahead" and service.counters.gate_waits["ahead"] == 1
        trainer["version"] = engine.policy_version = 1  # a batch consumed, its update swapped in: room for 4 more
        await until(lambda: service.counters.trajectories_written == 12)
        await asyncio.sleep(0.05)
        assert service.counters.episodes_started == 12
        trainer["version"] = engine.policy_version = 2
        return await running

    counters = run(scenario())
    assert counters.trajectories_written == 16 and counters.gate_waits["ahead"] == 2
    metrics = service.metrics()
    assert metrics["rollout/staleness_gate_waits"] == 2 and metrics["rollout/staleness_gate_wait_s"] >= 0.15
    assert metrics["rollout/trainer_version"] == 2


def test_staleness_gate_waits_for_a_swap_when_the_engine_lags_the_trainer(tokenizer, prompter):
    engine = FakeEngine(tokenizer, delay_s=0.001)
    service = make_service(
        tokenizer, prompter, engine=engine, max_staleness=0, batch_size=100,
        trainer_version=lambda: 1, poll_s=0.005,
    )

    async def scenario():
        running = asyncio.create_task(service.run(num_trajectories=4))
        await asyncio.sleep(0.1)
        assert service.counters.episodes_started == 0 and service._gate.state == "behind"
        engine.policy_version = 1
        return await running

    counters = run(scenario())
    assert counters.trajectories_written == 4 and counters.gate_waits["behind"] == 1
    assert all(t.min_policy_version == 1 for r in service.sink.records for t in r.turns)


def test_a_trainer_that_needs_more_than_a_group_never_deadlocks_the_gate(tokenizer, prompter):
    # batch 6, groups of 4, k = 0: the gate must let the second group start whole.
    sink, engine = FakeSink(), FakeEngine(tokenizer, delay_s=0.002)
    consumed = {"version": 0}

    async def trainer():
        while consumed["version"] < 3:
            await until(lambda: len(sink.records) >= 6 * (consumed["version"] + 1))
            consumed["version"] += 1
            engine.policy_version = consumed["version"]  # its update is swapped in

    service = make_service(
        tokenizer, prompter, sink=sink, engine=engine, group_size=4, concurrent_episodes=8,
        max_staleness=0, batch_size=6, trainer_version=lambda: consumed["version"], poll_s=0.002,
    )

    async def both():
        training = asyncio.create_task(trainer())
        counters = await service.run(num_trajectories=24)
        await training
        return counters

    assert run(both()).trajectories_written == 24


def test_a_failing_store_stops_the_service_with_its_error(tokenizer, prompter):
    service = make_service(tokenizer, prompter, sink=FakeSink(fail=True), concurrent_episodes=4)
    with pytest.raises(OSError, match="disk full"):
        run(service.run(num_trajectories=50))
    assert service.counters.trajectories_written == 0 and not service._tasks


def test_stop_lets_started_groups_finish(tokenizer, prompter):
    service = make_service(tokenizer, prompter, group_size=4, concurrent_episodes=2)

    async def scenario():
        running = asyncio.create_task(service.run())
        await until(lambda: service.counters.episodes_started >= 3)
        service.stop()
        return await running

    counters = run(scenario())
    assert counters.trajectories_written % 4 == 0 and counters.trajectories_written >= 4
    assert counters.trajectories_written == counters.episodes_started


def test_a_gate_needs_its_bound():
    with pytest.raises(ValueError, match="max_staleness and batch_size"):
        RolloutService(engine=None, cluster=None, sink=None, sampler=None, settings=SETTINGS, prompter=object(),
                       trainer_version=lambda: 0)


def test_release_frees_the_gate_capacity_of_written_trajectories_the_trainer_passes_over(tokenizer, prompter):
    service = make_service(tokenizer, prompter)
    service._pending = {"a1": 0, "a2": 0, "b1": 0}  # written, trainable until the lineage settles them
    assert service.release(["a1", "a2", "unknown"]) == 2
    assert service.released == 2 and set(service._pending) == {"b1"}
    assert service.release(["a1"]) == 0  # released once only


def test_room_is_what_the_gate_lets_start_counting_released_trajectories(tokenizer, prompter):
    assert make_service(tokenizer, prompter).room(0) is None  # no gate
    service = make_service(tokenizer, prompter, trainer_version=lambda: 0, max_staleness=0, batch_size=8)
    assert service.room(0) == 8 and service.room(2) == 24  # (v + k + 1) x batch
    run(service.run(8))
    assert service.room(0) == 0
    service._pending = {i: 0 for i in service.written_ids}
    service.release(service.written_ids[:6])  # e.g. groups dynamic sampling dropped
    assert service.room(0) == 6
    run(service.run(service.room(0)))  # asking for exactly the room returns (more would wait for the trainer)
    assert service.room(0) == 0


@pytest.mark.parametrize("template", [None, "Act: {action_format}"])
def test_from_config_prompts_with_the_configured_system_prompt(tokenizer, tiny_model_dir, template):
    from dartflow.config import validate_config

    config = validate_config({
        "run_name": "r", "work_dir": "w", "environments": [{"name": "guess_number"}],
        "rollout": {"system_prompt": template},
    })
    engine = FakeEngine(tokenizer)
    engine.model_dir = tiny_model_dir
    service = RolloutService.from_config(config, engine=engine, cluster=FakeCluster(), store=FakeSink())
    messages = service.prompter.start("Guess.", "One integer.").messages
    expected = [] if template is None else [{"role": "system", "content": "Act: One integer."}]
    assert list(messages) == [*expected, {"role": "user", "content": "Guess."}]
