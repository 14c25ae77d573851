"""The rollout engine: behaviour log-probs, concurrency, limits, weight swaps, shutdown.

Engine tests share one engine per model (a start costs ~20-30 s on 2 cores): the `engine` fixture
is module-scoped and parametrized over the untied and the tied tiny model, so pytest runs all
tests of one model, shuts its engine down, then starts the other. Most tests run on the untied
model only; the swap-correctness test runs on both (the tied head is the CPU backend's trap).
"""

import asyncio
import functools
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
from transformers import AutoTokenizer

from dartflow.config import EngineConfig, validate_config
from dartflow.storage.records import TrajectoryRecord, TurnRecord, records_to_table
from dartflow.tasks.models.agreement import chat_prompt_ids, load_transformers_policy, policy_token_logprobs
from dartflow.tasks.rollout.engine import EngineNotRunning, RolloutEngine, engine_processes
from dartflow.tasks.rollout.generation import (
    GenerationInterrupted,
    PromptTooLong,
    SamplingSettings,
    build_generation,
    normalize_finish_reason,
    token_versions_from_spans,
    turn_token_budget,
)
from dartflow.tasks.rollout.weight_sync import CheckpointMismatch, check_checkpoint_compatible
from dartflow.tasks.training.settings import TrainerSettings
from dartflow.tasks.training.trainer import Trainer

# Engine vs transformers on the same float32 weights: ~5e-7 measured here.
LOGPROB_TOLERANCE = 1e-4
MAX_MODEL_LEN = 1024
MAX_CONTEXT_TOKENS = 900
TEST_ENGINE = EngineConfig(kv_cache_space_gib=0.25, max_model_len=MAX_MODEL_LEN, max_num_seqs=64)
# Responses in flight during a swap: long enough that the swap surely lands mid-response, even
# when this process is starved while the engine's own processes keep generating.
LONG_RESPONSE = 600
UNTIED_ONLY = pytest.mark.parametrize("served", ["untied"], indirect=True)
TIED_ONLY = pytest.mark.parametrize("served", ["tied"], indirect=True)


# ---- pure rules ---------------------------------------------------------------------------


def test_turn_budget_is_max_new_tokens_cut_to_the_room_left():
    assert turn_token_budget(10, 64, max_context_tokens=200, max_model_len=256) == 64
    assert turn_token_budget(200, 64, max_context_tokens=200, max_model_len=256) == 56
    assert turn_token_budget(255, 64, max_context_tokens=300, max_model_len=256) == 1


def test_prompt_that_leaves_no_room_raises_prompt_too_long():
    with pytest.raises(PromptTooLong, match="max_context_tokens=200"):
        turn_token_budget(201, 8, max_context_tokens=200, max_model_len=256)
    with pytest.raises(PromptTooLong, match="max_model_len=256") as caught:
        turn_token_budget(256, 8, max_context_tokens=300, max_model_len=256)
    assert caught.value.num_prompt_tokens == 256 and caught.value.limit == 256
    with pytest.raises(ValueError, match="empty"):
        turn_token_budget(0, 8, max_context_tokens=200, max_model_len=256)


def test_token_versions_follow_weight_version_spans():
    spans = [("3", 0, 2), ("4", 2, 5)]
    assert token_versions_from_spans(spans, 5, fallback_version=0) == [3, 3, 4, 4, 4]
    assert token_versions_from_spans(None, 3, fallback_version=7) == [7, 7, 7]


def test_generation_version_range_and_timing():
    generation = build_generation(
        token_ids=[5, 6, 7],
        behavior_logprobs=[-1.0, -2.0, -3.0],
        version_spans=[("1", 0, 1), ("2", 1, 3)],
        finish_reason="length",
        num_prompt_tokens=4,
        submitted_version=1,
        submitted_at=10.0,
        first_token_at=10.5,
        finished_at=12.0,
    )
    assert (generation.min_policy_version, generation.max_policy_version) == (1, 2)
    assert generation.spans_versions and generation.token_policy_versions == [1, 2, 2]
    assert (generation.queued_s, generation.duration_s) == (0.5, 2.0)
    empty = build_generation(
        token_ids=[], behavior_logprobs=[], version_spans=None, finish_reason="abort", num_prompt_tokens=4,
        submitted_version=3, submitted_at=0.0, first_token_at=None, finished_at=1.0,
    )
    assert (empty.min_policy_version, empty.max_policy_version, empty.queued_s) == (3, 3, 1.0)


def test_finish_reasons_other_than_stop_and_length_are_aborts():
    assert [normalize_finish_reason(r) for r in ("stop", "length", "abort", "error", None)] == [
        "stop", "length", "abort", "abort", "abort",
    ]


def test_checkpoint_of_another_shape_or_tie_is_refused():
    base = {"model_type": "llama", "vocab_size": 1024, "hidden_size": 128, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 256, "tie_word_embeddings": False}
    check_checkpoint_compatible(base, dict(base, num_key_value_heads=4))  # missing = one per head
    with pytest.raises(CheckpointMismatch, match="hidden_size: engine 128, checkpoint 64"):
        check_checkpoint_compatible(base, dict(base, hidden_size=64))
    with pytest.raises(CheckpointMismatch, match="tie_word_embeddings"):
        check_checkpoint_compatible(base, {k: v for k, v in base.items() if k != "tie_word_embeddings"})


def test_sampling_settings_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(temperature=-1.0)


def test_engine_settings_come_from_the_run_config(tiny_model_dir):
    config = validate_config({
        "seed": 3,
        "model": {"source": "path", "path": str(tiny_model_dir), "dtype": "bfloat16"},
        "rollout": {"in_flight_on_swap": "requeue", "max_context_tokens": 300, "engine": {"max_model_len": 512}},
    })
    engine = RolloutEngine.from_config(config)  # not started: no process, no vLLM import
    assert (engine.model_dir, engine.dtype, engine.seed) == (tiny_model_dir, "bfloat16", 3)
    assert (engine.in_flight_on_swap, engine.max_context_tokens, engine.max_model_len) == ("requeue", 300, 512)
    assert engine.policy_version == 0 and engine.checkpoint_dir == tiny_model_dir
    with pytest.raises(EngineNotRunning, match="not started"):
        asyncio.run(engine.generate([1, 2, 3], max_new_tokens=4))


# ---- helpers for the engine tests ---------------------------------------------------------


def write_perturbed_checkpoint(src: Path, dst: Path, *, seed: int, scale: float = 0.02) -> Path:
    """`src` with Gaussian noise on every weight, saved like a trainer checkpoint (+ tokenizer)."""
    model = load_transformers_policy(src)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():  # a tied head is one parameter: it stays tied
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    model.save_pretrained(dst)
    for file in src.iterdir():
        if file.name.startswith("tokenizer") or file.suffix == ".jinja":
            shutil.copy(file, dst)
    return dst


@functools.lru_cache(maxsize=8)
def reference_policy(model_dir: Path):
    return load_transformers_policy(model_dir)


def reference_logprobs(model_dir: Path, token_ids: list[int]) -> list[float]:
    """transformers' log p(token_ids[t] | token_ids[:t]) for t >= 1 (float32, temperature 1)."""
    return policy_token_logprobs(reference_policy(model_dir), token_ids)


@torch.no_grad()
def reference_tempered_logprobs(model_dir: Path, prompt: list[int], response: list[int], temperature: float):
    """log softmax(logits / temperature) of each response token, by transformers."""
    input_ids = torch.tensor([prompt + response])  # (1, T)
    logits = reference_policy(model_dir)(input_ids=input_ids).logits[0, len(prompt) - 1 : -1]  # (R, V)
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(1, torch.tensor(response)[:, None])[:, 0].tolist()


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def max_gap(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) and a
    return max(abs(x - y) for x, y in zip(a, b))


async def gather(coroutines):
    # Inside a coroutine, so the futures belong to the loop that `run` drives.
    return await asyncio.gather(*coroutines)


def long_response(engine: RolloutEngine, prompt_ids: list[int], seed: int):
    return engine.generate(prompt_ids, max_new_tokens=LONG_RESPONSE, sampling=SamplingSettings(seed=seed))


async def wait_for_tokens(engine: RolloutEngine, count: int, timeout_s: float = 60.0) -> None:
    """Until `count` more tokens have streamed back: requests are surely mid-generation then."""
    target = engine.tokens_generated + count
    async with asyncio.timeout(timeout_s):
        while engine.tokens_generated < target:
            await asyncio.sleep(0.005)


# ---- engine fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def run():
    """Run a coroutine on the module's event loop (the engine lives on one loop for its life)."""
    loop = asyncio.new_event_loop()
    yield lambda coroutine, timeout_s=180: loop.run_until_complete(asyncio.wait_for(coroutine, timeout_s))
    loop.close()


@pytest.fixture(scope="module")
def model_dirs(request, tmp_path_factory):
    """Per model: the base folder and two perturbed checkpoints of it."""
    dirs = {}
    for kind, fixture in (("untied", "tiny_model_dir"), ("tied", "tiny_tied_model_dir")):
        base = request.getfixturevalue(fixture)
        out = tmp_path_factory.mktemp(f"checkpoints-{kind}")
        dirs[kind] = [base] + [write_perturbed_checkpoint(base, out / f"v{seed}", seed=seed) for seed in (1, 2)]
    return dirs


@dataclass
class Served:
    engine: RolloutEngine
    kind: str  # "untied" | "tied"
    checkpoints: list[Path]  # the base model, then two perturbed versions of it


@pytest.fixture(scope="module", params=["untied", "tied"])
def served(request, run, model_dirs):
    """A started engine on the tiny model of that kind, with checkpoints it can swap to."""
    base, *_ = model_dirs[request.param]
    # The tied engine reports raw log-probs: one more engine start would cost ~25 s just for that.
    logprobs_source = "processed" if request.param == "untied" else "raw"
    # The tied engine also runs bound to one core, as a run's CPU split binds it (checked below).
    cpu_ids = [min(os.sched_getaffinity(0))] if request.param == "tied" else None
    engine = RolloutEngine(
        base, engine=TEST_ENGINE, max_context_tokens=MAX_CONTEXT_TOKENS, logprobs_source=logprobs_source,
        cpu_ids=cpu_ids,
    )
    run(engine.start(), timeout_s=300)
    print(f"\n{request.param} engine started in {engine.start_s:.1f} s")
    yield Served(engine, request.param, model_dirs[request.param])
    run(engine.shutdown())


@pytest.fixture
def engine(served) -> RolloutEngine:
    return served.engine


@pytest.fixture(scope="module")
def prompt_ids(tiny_model_dir) -> list[int]:
    return chat_prompt_ids(AutoTokenizer.from_pretrained(tiny_model_dir), "Guess a number between 1 and 100.")


# ---- generation ---------------------------------------------------------------------------


@pytest.mark.slow
@UNTIED_ONLY
def test_behavior_logprobs_equal_transformers_at_temperature_1(engine, run, prompt_ids):
    generations = run(gather([
        engine.generate(prompt_ids, max_new_tokens=24, sampling=SamplingSettings(seed=seed)) for seed in range(4)
    ]))
    for generation in generations:
        expected = reference_logprobs(engine.checkpoint_dir, prompt_ids + generation.token_ids)[len(prompt_ids) - 1 :]
        assert max_gap(generation.behavior_logprobs, expected) <= LOGPROB_TOLERANCE
        assert generation.token_policy_versions == [engine.policy_version] * generation.num_tokens
        assert generation.num_prompt_tokens == len(prompt_ids)


@pytest.mark.slow
@UNTIED_ONLY
def test_behavior_logprobs_are_of_the_distribution_sampled_from(engine, run, prompt_ids):
    tempered = run(engine.generate(prompt_ids, max_new_tokens=24, sampling=SamplingSettings(temperature=0.7, seed=1)))
    expected = reference_tempered_logprobs(engine.checkpoint_dir, prompt_ids, tempered.token_ids, 0.7)
    assert max_gap(tempered.behavior_logprobs, expected) <= LOGPROB_TOLERANCE

    # top_p renormalizes over the nucleus (mass >= top_p): each log-prob rises by at most -log(top_p).
    nucleus = run(engine.generate(prompt_ids, max_new_tokens=24, sampling=SamplingSettings(top_p=0.9, seed=1)))
    full = reference_tempered_logprobs(engine.checkpoint_dir, prompt_ids, nucleus.token_ids, 1.0)
    for behavior, unnormalized in zip(nucleus.behavior_logprobs, full):
        assert 0 < behavior - unnormalized <= -math.log(0.9) + LOGPROB_TOLERANCE


@pytest.mark.slow
@UNTIED_ONLY
def test_trainer_scores_the_engines_samples_at_the_rollout_temperature(engine, run, prompt_ids, tmp_path, record_property):
    """Rows the engine sampled at T = 0.7, trained on by a run's trainer: train/behavior_approx_kl
    ~0 with training.temperature_correction (the trainer scores logits / T), far from 0 without."""
    generations = run(gather([
        engine.generate(prompt_ids, max_new_tokens=32, sampling=SamplingSettings(temperature=0.7, seed=seed))
        for seed in range(8)
    ]))
    turns = [
        TurnRecord("obs", "act", prompt_ids, g.token_ids, g.behavior_logprobs, min_policy_version=engine.policy_version)
        for g in generations if g.num_tokens
    ]
    batch = records_to_table([
        TrajectoryRecord(f"p{i // 4}", f"g{i // 4}", "toy", [t], "done", reward=float(i % 2)) for i, t in enumerate(turns)
    ], run_id="test")
    kls = {}
    for corrected in (True, False):
        config = validate_config({
            "rollout": {"temperature": 0.7},
            "training": {"temperature_correction": corrected, "batch_size": 8, "micro_batch_size": 4, "lr": 1e-6},
        })
        trainer = Trainer(
            engine.checkpoint_dir, checkpoint_root=tmp_path / str(corrected), settings=TrainerSettings.from_run_config(config)
        )
        kls[corrected] = trainer.train_step(batch).metrics["train/behavior_approx_kl"]
    print(f"behavior_approx_kl of engine rows at T=0.7: corrected {kls[True]:.2e}, uncorrected {kls[False]:.2e}")
    record_property("behavior_approx_kl_corrected", kls[True])
    record_property("behavior_approx_kl_uncorrected", kls[False])
    assert kls[True] < 1e-6
    assert kls[False] > 1e-3


@pytest.mark.slow
@UNTIED_ONLY
def test_32_concurrent_generations_share_the_engine(engine, run, prompt_ids, record_property):
    async def batch():
        started = asyncio.get_running_loop().time()
        generations = await asyncio.gather(*[
            engine.generate(prompt_ids, max_new_tokens=48, sampling=SamplingSettings(seed=seed)) for seed in range(32)
        ])
        return generations, asyncio.get_running_loop().time() - started

    run(batch())  # the first batch pays the engine's warm-up
    generations, seconds = run(batch())
    tokens = sum(generation.num_tokens for generation in generations)
    record_property("tokens_per_s", tokens / seconds)
    print(f"32 concurrent generations: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tokens/s")
    assert len({tuple(generation.token_ids) for generation in generations}) == 32  # seeds differ
    for generation in generations:
        assert 1 <= generation.num_tokens <= 48
        assert generation.finish_reason in ("stop", "length")
        assert len(generation.behavior_logprobs) == generation.num_tokens
        assert all(-30 < logprob <= 0 for logprob in generation.behavior_logprobs)
    again = run(engine.generate(prompt_ids, max_new_tokens=48, sampling=SamplingSettings(seed=5)))
    assert again.token_ids == generations[5].token_ids  # a request seed reproduces its tokens


@pytest.mark.slow
@UNTIED_ONLY
def test_the_cpu_engine_schedules_whole_prompts_only_and_seeded_batches_beyond_one_step_run(engine, run, prompt_ids):
    # Partly scheduled seeded requests crashed vLLM's CPU worker in a real run (engine._cpu_scheduling);
    # this load (24 seeded prompts of 600 tokens, more than one step's budget) did not reproduce it,
    # so the setting itself is checked.
    scheduler = engine._llm.vllm_config.scheduler_config
    assert scheduler.enable_chunked_prefill is False
    assert scheduler.max_num_batched_tokens >= engine.settings.max_model_len
    long_prompt = (prompt_ids * (600 // len(prompt_ids) + 1))[:600]
    generations = run(gather([
        engine.generate(long_prompt, max_new_tokens=4, sampling=SamplingSettings(seed=seed)) for seed in range(24)
    ]))
    assert all(1 <= generation.num_tokens <= 4 for generation in generations)
    again = run(engine.generate(long_prompt, max_new_tokens=4, sampling=SamplingSettings(seed=5)))
    assert again.token_ids == generations[5].token_ids  # seeds still reproduce


@pytest.mark.slow
@UNTIED_ONLY
def test_stop_token_ends_the_response_and_is_kept(engine, run, prompt_ids):
    free = run(engine.generate(prompt_ids, max_new_tokens=24, sampling=SamplingSettings(seed=3)))
    stop_token = free.token_ids[4]
    stopped = run(engine.generate(
        prompt_ids, max_new_tokens=24, sampling=SamplingSettings(seed=3), stop_token_ids=[stop_token]
    ))
    end = free.token_ids.index(stop_token) + 1
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[:end]
    assert stopped.behavior_logprobs == pytest.approx(free.behavior_logprobs[:end], abs=LOGPROB_TOLERANCE)


@pytest.mark.slow
@UNTIED_ONLY
def test_prompts_that_do_not_fit_raise_and_responses_stop_at_the_context(engine, run):
    with pytest.raises(PromptTooLong):
        run(engine.generate([5] * (MAX_CONTEXT_TOKENS + 1), max_new_tokens=8))
    room = MAX_MODEL_LEN - MAX_CONTEXT_TOKENS
    filling = run(engine.generate([5] * MAX_CONTEXT_TOKENS, max_new_tokens=room + 50))
    if filling.finish_reason == "length":
        assert filling.num_tokens == room
    else:  # the tiny model's eos (id 2) came first
        assert filling.num_tokens < room and filling.token_ids[-1] == 2
    assert run(engine.generate([5, 6, 7], max_new_tokens=4)).num_tokens >= 1  # still serving


# ---- weight swaps -------------------------------------------------------------------------


@pytest.mark.slow
def test_swap_makes_engine_logprobs_equal_transformers_on_the_new_checkpoint(
    served, engine, run, prompt_ids, record_property
):
    base, new, _ = served.checkpoints
    sequence = prompt_ids + list(range(300, 340))
    version = engine.policy_version + 1
    seconds = run(engine.update_weights(version, new))
    record_property(f"swap_s_{served.kind}", seconds)
    print(f"{served.kind} swap: {seconds * 1000:.0f} ms")
    assert engine.policy_version == version and engine.last_swap_s == seconds
    assert engine.checkpoint_dir == new.absolute()
    assert max_gap(reference_logprobs(base, sequence), reference_logprobs(new, sequence)) > 0.05  # really new
    assert max_gap(run(engine.sequence_logprobs(sequence)), reference_logprobs(new, sequence)) <= LOGPROB_TOLERANCE

    generation = run(engine.generate(prompt_ids, max_new_tokens=24, sampling=SamplingSettings(seed=0)))
    expected = reference_logprobs(new, prompt_ids + generation.token_ids)[len(prompt_ids) - 1 :]
    assert max_gap(generation.behavior_logprobs, expected) <= LOGPROB_TOLERANCE
    assert generation.token_policy_versions == [version] * generation.num_tokens


@pytest.mark.slow
@UNTIED_ONLY
def test_a_checkpoint_of_another_shape_is_refused_and_the_engine_keeps_serving(engine, run, tiny_tied_model_dir):
    version = engine.policy_version
    with pytest.raises(CheckpointMismatch, match="tie_word_embeddings"):
        run(engine.update_weights(version + 1, tiny_tied_model_dir))
    assert engine.policy_version == version
    assert run(engine.generate([5, 6, 7], max_new_tokens=4)).token_policy_versions == [version] * 4


@pytest.mark.slow
@UNTIED_ONLY
def test_finish_mode_tokens_carry_the_version_of_the_weights_that_sampled_them(served, engine, run, prompt_ids):
    old_dir, new_dir = engine.checkpoint_dir, served.checkpoints[2]
    old_version, new_version = engine.policy_version, engine.policy_version + 1

    async def swap_mid_generation():
        requests = [asyncio.create_task(long_response(engine, prompt_ids, seed)) for seed in range(8)]
        await wait_for_tokens(engine, 8 * 8)
        await engine.update_weights(new_version, new_dir, in_flight="finish")
        return await asyncio.gather(*requests)

    generations = run(swap_mid_generation())
    spanning = [generation for generation in generations if generation.spans_versions]
    assert spanning, "no response was in flight during the swap"
    for generation in spanning:
        versions = generation.token_policy_versions
        switch = versions.index(new_version)
        assert 0 < switch and versions == [old_version] * switch + [new_version] * (len(versions) - switch)
        sequence = prompt_ids + generation.token_ids
        start = len(prompt_ids) - 1
        # Before the switch: the old policy. After it: the new one, given the *whole* context
        # (the swap recomputes the context's KV cache with the new weights).
        old = reference_logprobs(old_dir, sequence)[start : start + switch]
        new = reference_logprobs(new_dir, sequence)[start + switch :]
        assert max_gap(generation.behavior_logprobs[:switch], old) <= LOGPROB_TOLERANCE
        assert max_gap(generation.behavior_logprobs[switch:], new) <= LOGPROB_TOLERANCE


@pytest.mark.slow
@UNTIED_ONLY
def test_requeue_mode_interrupts_in_flight_generations(served, engine, run, prompt_ids):
    old_version, new_version = engine.policy_version, engine.policy_version + 1

    async def swap_mid_generation():
        requests = [asyncio.create_task(long_response(engine, prompt_ids, seed)) for seed in range(8)]
        await wait_for_tokens(engine, 8 * 8)
        await engine.update_weights(new_version, served.checkpoints[1], in_flight="requeue")
        return await asyncio.gather(*requests, return_exceptions=True)

    outcomes = run(swap_mid_generation())
    interrupted = [outcome for outcome in outcomes if isinstance(outcome, GenerationInterrupted)]
    assert interrupted, "no response was in flight during the swap"
    for outcome in outcomes:
        if isinstance(outcome, GenerationInterrupted):
            assert outcome.partial.finish_reason == "abort" and outcome.partial.num_tokens > 0
            assert outcome.partial.token_policy_versions == [old_version] * outcome.partial.num_tokens
        else:  # only a response that ended before the swap may come back whole
            assert outcome.finish_reason == "stop" and outcome.max_policy_version == old_version
    retried = run(engine.generate(prompt_ids, max_new_tokens=8, sampling=SamplingSettings(seed=0)))
    assert retried.token_policy_versions == [new_version] * retried.num_tokens


@pytest.mark.slow
@TIED_ONLY
def test_raw_logprobs_are_the_models_own_whatever_the_temperature(engine, run, prompt_ids):
    assert engine.logprobs_source == "raw"
    generation = run(engine.generate(prompt_ids, max_new_tokens=24, sampling=SamplingSettings(temperature=0.7, seed=2)))
    expected = reference_logprobs(engine.checkpoint_dir, prompt_ids + generation.token_ids)[len(prompt_ids) - 1 :]
    assert max_gap(generation.behavior_logprobs, expected) <= LOGPROB_TOLERANCE


# ---- tied heads and shutdown --------------------------------------------------------------


@pytest.mark.slow
@TIED_ONLY
def test_a_stale_tied_head_after_a_plain_vllm_reload_is_detected(served, engine, run):
    base, new, _ = served.checkpoints
    llm = engine._llm  # private on purpose: this test goes around dartflow's swap
    other = new if engine.checkpoint_dir == base else base
    run(llm.collective_rpc("reload_weights", kwargs={"weights_path": str(other)}))
    with pytest.raises(Exception, match="LM head disagrees with its weight"):
        run(llm.collective_rpc("dartflow_check_lm_heads"))
    run(engine.update_weights(engine.policy_version + 1, base))  # the dartflow path repairs it
    assert run(llm.collective_rpc("dartflow_check_lm_heads")) == [1]


@pytest.mark.slow
def test_an_engine_given_cores_runs_its_worker_threads_on_them_only(served):
    """The CPU split's engine side: vLLM's CPU worker binds its compute threads to `cpu_ids`."""
    if served.engine.cpu_ids is None:
        pytest.skip("this engine is not bound (the tied one is)")
    _, handles = engine_processes(served.engine._llm)
    workers = [h for h in handles if "Worker" in h.name()]
    assert workers, [h.name() for h in handles]
    for worker in workers:
        assert {tuple(sorted(os.sched_getaffinity(t.id))) for t in worker.threads()} == {tuple(served.engine.cpu_ids)}
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ  # set for the engine's start only


@pytest.mark.slow
@TIED_ONLY
def test_shutdown_leaves_no_engine_process(engine, run):
    _, processes = engine_processes(engine._llm)
    assert len(processes) >= 2  # the engine core and its worker
    run(engine.shutdown())
    assert not [process for process in processes if alive(process)]
    with pytest.raises(EngineNotRunning):
        run(engine.generate([5, 6, 7], max_new_tokens=4))
    run(engine.shutdown())  # idempotent
