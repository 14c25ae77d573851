"""The rollout service end to end: the real vLLM engine (tiny model), environment cluster and store.

One engine, one cluster (guess_number over [1, 16]) and one store are shared by the module (an
engine start costs ~20 s here); policy versions only grow from test to test. Episodes use
`on_length_cut="act"` so that the untrained tiny model, which rarely ends a response on its own,
still plays several turns.
"""

import asyncio
import random
import shutil
from pathlib import Path

import pytest
import torch

from dartflow.config import EngineConfig
from dartflow.storage import TrajectoryStore
from dartflow.tasks.envs.cluster import EnvironmentCluster
from dartflow.tasks.models.agreement import load_transformers_policy, policy_token_logprobs
from dartflow.tasks.rollout.engine import RolloutEngine
from dartflow.tasks.rollout.episode import EpisodeSettings
from dartflow.tasks.rollout.generation import SamplingSettings
from dartflow.tasks.rollout.sampler import UniformSampler
from dartflow.tasks.rollout.service import RolloutService
from dartflow.tasks.rollout.staleness import LineageTrainerVersion

pytestmark = pytest.mark.slow

LOGPROB_TOLERANCE = 1e-4  # engine vs transformers, float32: ~1e-6 measured
GUESS = ("guess_number", {"high": 16}, 1.0)
SETTINGS = EpisodeSettings(
    max_turns=3, max_new_tokens=8, sampling=SamplingSettings(temperature=1.0), on_length_cut="act"
)
ENGINE = EngineConfig(kv_cache_space_gib=0.25, max_model_len=1024, max_num_seqs=32)


def perturbed_checkpoint(src: Path, dst: Path, seed: int) -> Path:
    """`src` with Gaussian noise on every weight, saved like a trainer checkpoint (+ tokenizer)."""
    model = load_transformers_policy(src)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    model.save_pretrained(dst)
    for file in src.iterdir():
        if file.name.startswith("tokenizer") or file.suffix == ".jinja":
            shutil.copy(file, dst)
    return dst


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def run(loop):
    return lambda coroutine, timeout_s=240: loop.run_until_complete(asyncio.wait_for(coroutine, timeout_s))


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory):
    """Version -> checkpoint folder: 0 is the base model, 1..4 perturbed copies of it."""
    out = tmp_path_factory.mktemp("checkpoints")
    return [tiny_model_dir] + [perturbed_checkpoint(tiny_model_dir, out / f"v{v}", seed=v) for v in range(1, 5)]


@pytest.fixture(scope="module")
def engine(run, tiny_model_dir):
    engine = RolloutEngine(tiny_model_dir, engine=ENGINE, max_context_tokens=900)
    run(engine.start(), timeout_s=300)
    yield engine
    run(engine.shutdown())


@pytest.fixture(scope="module")
def cluster(run):
    cluster = EnvironmentCluster([GUESS[:2]], num_workers=1, slots_per_worker=16)
    run(cluster.start())
    yield cluster
    run(cluster.close())


@pytest.fixture
def store(tmp_path):
    return TrajectoryStore(str(tmp_path / "lancedb"), run_id="test", compact_every_appends=0)


def make_service(engine, cluster, store, **kwargs) -> RolloutService:
    kwargs.setdefault("sampler", UniformSampler([GUESS], group_size=4, seed=0))
    kwargs.setdefault("concurrent_episodes", 8)
    return RolloutService(engine=engine, cluster=cluster, sink=store, settings=SETTINGS, run_id="test", **kwargs)


def all_rows(store: TrajectoryStore):
    return store.next_batch(trainer_version=0, max_staleness=1000, batch_size=10_000).to_pylist()


def check_logprobs_against_transformers(rows, checkpoints, count: int, seed: int = 0) -> int:
    """Recompute the behaviour log-probs of single-version turns with transformers; return turns checked."""
    policies = {}
    turns = [(row, t) for row in rows for t in range(row["num_turns"])
             if row["turn_min_policy_version"][t] == row["turn_max_policy_version"][t]]
    for row, t in random.Random(seed).sample(turns, min(count, len(turns))):
        version = row["turn_min_policy_version"][t]
        policy = policies.setdefault(version, load_transformers_policy(checkpoints[version]))
        prompt, response = row["prompt_token_ids"][t], row["response_token_ids"][t]
        expected = policy_token_logprobs(policy, prompt + response)[len(prompt) - 1 :]
        assert max(abs(a - b) for a, b in zip(row["behavior_logprobs"][t], expected)) <= LOGPROB_TOLERANCE
    return min(count, len(turns))


def test_n_guess_number_episodes_land_n_trajectories_with_their_versions_and_logprobs(
    engine, cluster, store, run, checkpoints
):
    assert engine.policy_version == 0
    service = make_service(engine, cluster, store)
    counters = run(service.run(num_trajectories=12))
    rows = all_rows(store)
    assert len(rows) == 12 == counters.trajectories_written and store.count() == 12
    assert sorted(row["trajectory_id"] for row in rows) == sorted(service.written_ids)
    assert len({row["group_id"] for row in rows}) == 3
    assert {row["finish_reason"] for row in rows} <= {"done", "truncated"}
    assert max(row["num_turns"] for row in rows) >= 2  # multi-turn episodes happened
    for row in rows:
        assert row["environment"] == "guess_number" and row["run_id"] == "test" and row["split"] == "train"
        assert row["turn_min_policy_version"] == row["turn_max_policy_version"] == [0] * row["num_turns"]
        for t in range(1, row["num_turns"]):  # each prompt extends the previous prompt + response
            head = row["prompt_token_ids"][t - 1] + row["response_token_ids"][t - 1]
            assert row["prompt_token_ids"][t][: len(head)] == head
        assert row["actions"] and all(obs for obs in row["observations"])
    assert check_logprobs_against_transformers(rows, checkpoints, count=8) == 8
    metrics = service.metrics()
    print(f"\n12 episodes, {metrics['rollout/turns']:.0f} turns, {metrics['rollout/tokens_per_s']:.0f} tokens/s")
    assert metrics["rollout/episodes"] == 12 and metrics["rollout/tokens_per_s"] > 0
    service.close()


def test_async_training_loop_with_live_swaps_respects_the_staleness_bound(engine, cluster, store, run, checkpoints):
    """A stand-in trainer consumes batches of 4 from the store with max staleness 1 and swaps in
    a new checkpoint (finish mode) after each; the service's gate keeps every trajectory usable."""
    k, batch_size, steps = 1, 4, 3
    start = engine.policy_version
    service = make_service(
        engine, cluster, store, max_staleness=k, batch_size=batch_size,
        trainer_version=LineageTrainerVersion(store, refresh_s=0.0), poll_s=0.02,
    )
    consumed = []

    async def trainer():
        for version in range(steps):
            while True:
                batch = await asyncio.to_thread(store.next_batch, version, k, batch_size)
                if batch.num_rows == batch_size:
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(store.record_consumption, version, batch)
            consumed.append(batch.to_pylist())
            await engine.update_weights(start + version + 1, checkpoints[start + version + 1], in_flight="finish")

    async def both():
        training = asyncio.create_task(trainer())
        counters = await service.run(num_trajectories=(steps + k) * batch_size)
        await training
        return counters

    # Version labels: the engine started this test at `start`, the trainer counts from 0.
    run(both())
    rows = all_rows(store) + [row for batch in consumed for row in batch]
    assert len(consumed) == steps and len(rows) == (steps + k) * batch_size
    for version, batch in enumerate(consumed):
        assert all(version - (row["min_policy_version"] - start) <= k for row in batch)
    versions = {v for row in rows for v in row["turn_min_policy_version"]}
    assert len(versions) >= 2  # the swaps landed while the service ran
    assert service.counters.requeued == 0  # finish mode: episodes in flight during a swap go on
    for row in rows:  # a turn's versions never go back
        assert row["turn_min_policy_version"] == sorted(row["turn_min_policy_version"])
    check_logprobs_against_transformers(rows, checkpoints, count=6, seed=1)
    metrics = service.metrics()
    print(f"\nversions {sorted(versions)}, turns spanning a swap {metrics['rollout/turns_spanning_versions']:.0f}, "
          f"gate waits {metrics['rollout/staleness_gate_waits']:.0f} "
          f"({metrics['rollout/staleness_gate_wait_s']:.2f} s)")
    assert metrics["rollout/staleness_gate_waits"] >= 1
    service.close()


def test_requeue_mode_reruns_interrupted_episodes_under_the_new_weights(engine, cluster, store, run, checkpoints):
    old = engine.policy_version
    new = old + 1
    service = make_service(engine, cluster, store, concurrent_episodes=8)

    async def swap_mid_run():
        running = asyncio.create_task(service.run(num_trajectories=16))
        target = engine.tokens_generated + 40
        while engine.tokens_generated < target:  # episodes are surely mid-generation now
            await asyncio.sleep(0.002)
        await engine.update_weights(new, checkpoints[new], in_flight="requeue")
        return await running

    counters = run(swap_mid_run())
    rows = all_rows(store)
    print(f"\nrequeued {counters.requeued} of {counters.episodes_started} episodes started")
    assert counters.requeued >= 1 and len(rows) == 16
    assert all(row["finish_reason"] in ("done", "truncated") for row in rows)
    for row in rows:
        assert row["turn_min_policy_version"] == row["turn_max_policy_version"]  # no turn spans the swap
        if row["min_policy_version"] != row["max_policy_version"]:  # crossed the swap between turns
            assert row["turn_max_policy_version"][-1] == new
    rerun = [row for row in rows if '"attempt": 0' not in row["metadata_json"]]
    assert rerun and all(set(row["turn_min_policy_version"]) == {new} for row in rerun)
    check_logprobs_against_transformers(rerun, checkpoints, count=4, seed=2)
    service.close()
