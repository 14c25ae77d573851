"""The rollout engine: vLLM's AsyncLLM behind a small async API for the episode loop.

    async with RolloutEngine(model_dir, engine=config.rollout.engine) as engine:
        generation = await engine.generate(prompt_ids, max_new_tokens=64, sampling=SamplingSettings())
        seconds = await engine.update_weights(version=1, checkpoint_dir=path)

Many `generate` calls run at once: vLLM batches them continuously. Log-prob semantics are in
generation.py. A weight swap pauses the scheduler, reloads the checkpoint in place (no restart),
drops every KV block computed with the old weights, labels the engine with the new policy version
and resumes. Requests in flight then either finish under the new weights (`finish`: each token
carries the version that sampled it, and their context is recomputed with the new weights first)
or are aborted and raise GenerationInterrupted (`requeue`).

On CPU the engine starts worker processes with spawn: scripts need `if __name__ == "__main__":`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dartflow.tasks.cpu_split import engine_bind_env
from dartflow.tasks.models.folders import require_model_folder
from dartflow.tasks.rollout.generation import (
    VLLM_LOGPROBS_MODE,
    Generation,
    GenerationInterrupted,
    InFlightOnSwap,
    LogprobsSource,
    SamplingSettings,
    build_generation,
    normalize_finish_reason,
    sampled_logprobs,
    turn_token_budget,
)
from dartflow.tasks.rollout.weight_sync import (
    WORKER_EXTENSION,
    check_checkpoint_compatible,
    read_model_config,
)

if TYPE_CHECKING:
    from dartflow.config import EngineConfig, RunConfig

logger = logging.getLogger(__name__)
GIB = 1 << 30


@dataclass
class _Streamed:
    """What one request streamed back."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None  # vLLM's; None if the stream ended without one
    version_spans: list[tuple[str, int, int]] | None = None
    first_token_at: float | None = None


class EngineNotRunning(RuntimeError):
    """generate/update_weights on an engine that is not started, was shut down, or broke in a swap."""


def _cpu_scheduling(max_model_len: int) -> dict:
    """No chunked prefill on CPU. vLLM's CPU worker died ("CPU Generator does not use offset") in a
    held-out evaluation of 32 seeded episodes: for a request scheduled only in part it rewinds the
    request's seeded generator, which a CPU generator cannot do, and every rollout and evaluation
    request carries a seed. Whole prompts only, so the step budget must hold the longest one."""
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 4096)}


class RolloutEngine:
    """One vLLM AsyncLLM serving one policy, its weights swappable in place."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        engine: EngineConfig | None = None,
        dtype: str = "float32",
        max_context_tokens: int | None = None,
        in_flight_on_swap: InFlightOnSwap = "finish",
        logprobs_source: LogprobsSource = "processed",
        seed: int = 0,
        policy_version: int = 0,
        cpu_ids: list[int] | None = None,
    ):
        """cpu_ids: the cores a CPU engine's threads are bound to (tasks/cpu_split.py); None: vLLM's default."""
        from dartflow.config import EngineConfig

        self.model_dir = require_model_folder(model_dir)
        self.settings = engine if engine is not None else EngineConfig()
        if in_flight_on_swap not in ("finish", "requeue"):
            raise ValueError(f"in_flight_on_swap must be 'finish' or 'requeue', got {in_flight_on_swap!r}")
        if logprobs_source not in VLLM_LOGPROBS_MODE:
            raise ValueError(f"logprobs_source must be one of {sorted(VLLM_LOGPROBS_MODE)}, got {logprobs_source!r}")
        self.dtype = dtype
        self.max_context_tokens = max_context_tokens or self.settings.max_model_len
        self.in_flight_on_swap: InFlightOnSwap = in_flight_on_swap
        self.logprobs_source: LogprobsSource = logprobs_source
        self.seed = seed
        self.cpu_ids = cpu_ids
        self.hf_config = read_model_config(self.model_dir)  # config.json: checkpoints must match its shape
        self._policy_version = policy_version
        self._checkpoint_dir = self.model_dir
        self._llm = None
        self._broken: str | None = None
        self._swap_lock = asyncio.Lock()
        self._request_ids = itertools.count()
        self.start_s: float | None = None  # seconds `start` took
        self.last_swap_s: float | None = None  # seconds the latest `update_weights` took
        self.tokens_generated = 0  # sampled tokens streamed back so far, all requests together
        self.num_in_flight = 0

    @classmethod
    def from_config(
        cls, config: RunConfig, model_dir: str | os.PathLike | None = None, *, policy_version: int = 0,
        cpu_ids: list[int] | None = None,
    ) -> RolloutEngine:
        """The engine a run config describes (model folder: `model_dir` or the config's), serving
        `policy_version` (the version of the checkpoint in `model_dir`), bound to `cpu_ids` (the run's CPU split)."""
        return cls(
            model_dir if model_dir is not None else config.model_dir,
            engine=config.rollout.engine,
            dtype=config.model.dtype,
            max_context_tokens=config.rollout.max_context_tokens,
            in_flight_on_swap=config.rollout.in_flight_on_swap,
            seed=config.seed,
            policy_version=policy_version,
            cpu_ids=cpu_ids,
        )

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> RolloutEngine:
        """Start the engine (its worker processes load the model: ~20 s for a tiny model on CPU)."""
        if self._llm is not None:
            return self
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.perf_counter()
        args = AsyncEngineArgs(
            model=str(self.model_dir),
            dtype=self.dtype,
            seed=self.seed,
            max_model_len=self.settings.max_model_len,
            max_num_seqs=self.settings.max_num_seqs,
            enforce_eager=self.settings.enforce_eager,
            gpu_memory_utilization=self.settings.gpu_memory_utilization,
            # On CPU the KV cache is sized in bytes; on a GPU the utilisation fraction decides.
            kv_cache_memory_bytes=int(self.settings.kv_cache_space_gib * GIB) if current_platform.is_cpu() else None,
            **_cpu_scheduling(self.settings.max_model_len) if current_platform.is_cpu() else {},
            logprobs_mode=VLLM_LOGPROBS_MODE[self.logprobs_source],
            worker_extension_cls=WORKER_EXTENSION,
            disable_log_stats=True,
        )
        # Built inside the running loop, as vLLM's own server does: its output handler and ZMQ
        # sockets belong to this loop. Blocks the loop while the model loads. The engine-core
        # process reads its thread binding from the environment it is spawned with.
        bind = engine_bind_env(self.cpu_ids) if current_platform.is_cpu() else {}
        with _environment(bind):
            self._llm = AsyncLLM.from_engine_args(args)
        await self._llm.update_weight_version(str(self._policy_version))
        self.start_s = time.perf_counter() - started
        logger.info("rollout engine for %s started in %.1f s", self.model_dir, self.start_s)
        return self

    async def shutdown(self, timeout_s: float = 15.0) -> None:
        """Stop the engine and wait until its processes are gone (idempotent).

        vLLM's own shutdown sends SIGTERM, gives the engine core ~5 s, then SIGKILLs it and
        returns without waiting: its processes can outlive the call for a moment. The wait makes
        "shut down" mean "no engine process left".
        """
        llm, self._llm = self._llm, None
        if llm is None:
            return
        cores, handles = engine_processes(llm)
        llm.shutdown()
        wait_until_gone(cores, handles, timeout_s)

    async def __aenter__(self) -> RolloutEngine:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.shutdown()

    @property
    def policy_version(self) -> int:
        """Version of the weights new tokens are sampled with."""
        return self._policy_version

    @property
    def checkpoint_dir(self) -> Path:
        """Folder of the weights the engine holds now."""
        return self._checkpoint_dir

    @property
    def max_model_len(self) -> int:
        return self.settings.max_model_len

    def _running_llm(self):
        if self._broken is not None:
            raise EngineNotRunning(self._broken)
        if self._llm is None:
            raise EngineNotRunning("the rollout engine is not started (await engine.start())")
        return self._llm

    # ---- generation -------------------------------------------------------------------------

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        *,
        max_new_tokens: int,
        sampling: SamplingSettings = SamplingSettings(),
        stop_token_ids: Sequence[int] | None = None,
    ) -> Generation:
        """Sample one response to `prompt_token_ids`.

        Stops at the model's eos or any of `stop_token_ids` (the stop token is the last of
        `token_ids`, with its log-prob), or after `max_new_tokens` cut to the room left in
        max_model_len. Raises PromptTooLong when the prompt does not fit (the episode ends as
        truncated) and GenerationInterrupted when the engine aborts the request (requeue it).
        """
        llm = self._running_llm()
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        prompt = [int(token) for token in prompt_token_ids]
        budget = turn_token_budget(
            len(prompt),
            max_new_tokens,
            max_context_tokens=self.max_context_tokens,
            max_model_len=self.max_model_len,
        )
        params = SamplingParams(
            max_tokens=budget,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop_token_ids=list(stop_token_ids or []),
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,  # the episode loop decodes what it needs; saves CPU per token
            output_kind=RequestOutputKind.DELTA,  # streamed: progress is visible, partials survive aborts
        )
        submitted_version = self._policy_version
        submitted_at = time.perf_counter()
        stream = await self._stream(llm, prompt, params)
        generation = build_generation(
            token_ids=stream.token_ids,
            behavior_logprobs=stream.logprobs,
            version_spans=stream.version_spans,
            finish_reason=normalize_finish_reason(stream.finish_reason),
            num_prompt_tokens=len(prompt),
            submitted_version=submitted_version,
            submitted_at=submitted_at,
            first_token_at=stream.first_token_at,
            finished_at=time.perf_counter(),
        )
        if generation.finish_reason == "abort":
            raise GenerationInterrupted(generation)
        return generation

    async def _stream(self, llm, prompt: list[int], params) -> _Streamed:
        """Run one request, collecting its streamed tokens, their log-probs and version spans."""
        from vllm.inputs.engine import tokens_input

        streamed = _Streamed()
        self.num_in_flight += 1
        try:
            async for output in llm.generate(tokens_input(prompt), params, f"gen-{next(self._request_ids)}"):
                completion = output.outputs[0]
                new_tokens = list(completion.token_ids)
                if new_tokens:
                    streamed.first_token_at = streamed.first_token_at or time.perf_counter()
                    streamed.token_ids.extend(new_tokens)
                    streamed.logprobs.extend(sampled_logprobs(completion.logprobs, new_tokens))
                    self.tokens_generated += len(new_tokens)
                if completion.finish_reason is not None:
                    streamed.finish_reason = completion.finish_reason
                if completion.weight_versions is not None:  # vLLM sends them with the last output
                    spans = completion.weight_versions
                    streamed.version_spans = [(span.version, span.start, span.end) for span in spans]
        finally:
            self.num_in_flight -= 1
        return streamed

    async def sequence_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        """log p(token_ids[t] | token_ids[:t]) for t >= 1 under the current weights (temperature 1)."""
        llm = self._running_llm()
        from vllm import SamplingParams
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind

        tokens = [int(token) for token in token_ids]
        turn_token_budget(len(tokens), 1, max_context_tokens=self.max_model_len, max_model_len=self.max_model_len)
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for output in llm.generate(tokens_input(tokens), params, f"score-{next(self._request_ids)}"):
            final = output
        # prompt_logprobs[t] maps token ids to Logprob for position t; position 0 has none.
        return [final.prompt_logprobs[t][token].logprob for t, token in enumerate(tokens) if t > 0]

    # ---- weights ----------------------------------------------------------------------------

    async def update_weights(
        self, version: int, checkpoint_dir: str | os.PathLike, *, in_flight: InFlightOnSwap | None = None
    ) -> float:
        """Swap in the weights of `checkpoint_dir` as policy `version`; return the seconds it took.

        `in_flight` overrides the engine's `in_flight_on_swap` for this swap. Swaps are serialized.
        A checkpoint of another architecture raises CheckpointMismatch before anything is paused.
        """
        mode = in_flight or self.in_flight_on_swap
        if mode not in ("finish", "requeue"):
            raise ValueError(f"in_flight must be 'finish' or 'requeue', got {mode!r}")
        checkpoint = Path(checkpoint_dir).absolute()
        check_checkpoint_compatible(self.hf_config, read_model_config(checkpoint))
        async with self._swap_lock:
            llm = self._running_llm()
            started = time.perf_counter()
            # "keep" freezes requests where they are; "abort" ends them (their callers raise
            # GenerationInterrupted). Either way requests that arrive now wait for the resume.
            await llm.pause_generation(mode="keep" if mode == "finish" else "abort", clear_cache=False)
            try:
                await llm.collective_rpc("dartflow_load_checkpoint", kwargs={"checkpoint_dir": str(checkpoint)})
                # Every KV block was computed with the old weights. Dropping them all, including
                # those of paused requests (which are recomputed on resume), makes each new token
                # a sample of the new policy given its whole context, as its version label says.
                await llm.reset_prefix_cache(reset_running_requests=True)
                await llm.update_weight_version(str(version))
            except BaseException as error:
                # Weights may be half old, half new: serve nothing rather than a policy no one trained.
                self._broken = f"a weight swap to version {version} failed ({error!r}); restart the engine"
                with contextlib.suppress(Exception):
                    await llm.pause_generation(mode="abort", clear_cache=True)
                raise
            self._policy_version = version
            self._checkpoint_dir = checkpoint
            await llm.resume_generation()
            self.last_swap_s = time.perf_counter() - started
        logger.info("policy version %d loaded from %s in %.3f s (%s)", version, checkpoint, self.last_swap_s, mode)
        return self.last_swap_s


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """os.environ with `values` set, restored afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def engine_processes(llm) -> tuple[list, list]:
    """(engine-core `multiprocessing` processes, psutil handles of those and of their workers)."""
    import psutil

    manager = getattr(getattr(llm.engine_core, "resources", None), "engine_manager", None)
    cores = [process for process in getattr(manager, "processes", []) if process.pid is not None]
    handles = []
    for core in cores:
        try:
            handle = psutil.Process(core.pid)
            handles.extend([handle, *handle.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    return cores, handles


def wait_until_gone(cores: list, handles: list, timeout_s: float) -> None:
    """Join the engine cores (reaping them), wait for the rest; SIGKILL what outlives `timeout_s`."""
    import psutil

    deadline = time.monotonic() + timeout_s
    for core in cores:
        core.join(max(0.0, deadline - time.monotonic()))

    def running(handle) -> bool:
        try:
            return handle.is_running() and handle.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    while any(running(handle) for handle in handles) and time.monotonic() < deadline:
        time.sleep(0.05)
    for handle in filter(running, handles):
        logger.warning("engine process %d did not exit in %.0f s: killing it", handle.pid, timeout_s)
        try:
            handle.kill()
        except psutil.NoSuchProcess:
            continue
    for core in cores:
        core.join(1.0)
