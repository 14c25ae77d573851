"""How the rollout engine and the trainer share a CPU-only machine's cores.

vLLM's CPU backend and torch each start one thread per core. In one box they oversubscribe the
cores, and the trainer loses most: measured with SmolLM2 on 2 cores, the engine kept 0.90 of its
tokens/s while the trainer fell to 0.28; with the engine bound to core 0 and the trainer to core 1
both kept >= 0.96 (../shared/STACK.md). So on a CPU engine the cores are split by default:

    split = plan_cpu_split(sorted(os.sched_getaffinity(0)), "auto", "auto", engine_on_cpu=True)
    # 2 cores: CpuSplit(engine_cpus=[0], trainer_cpus=[1])
    os.environ.update(engine_bind_env(split.engine_cpus))   # before the engine starts its processes
    with pinned(split.trainer_cpus):                        # around every train step
        trainer.train_step(batch)

A spec is "auto" (split the allowed cores: the engine the first half, rounded up, the trainer the
rest; nothing is pinned with one core or when the engine runs on a GPU), "all" (no pinning: every
thread may use every core, the behaviour of a plain vLLM + torch process) or a list of core ids.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Union

CpuSpec = Union[Literal["auto", "all"], list[int]]
# vLLM's CPU worker binds its OpenMP threads to this list of cores ("nobind": leave them be).
ENGINE_BIND_VAR = "VLLM_CPU_OMP_THREADS_BIND"


@dataclass(frozen=True)
class CpuSplit:
    """Cores of each side; None: not pinned (every allowed core, the library's own thread count)."""

    engine_cpus: list[int] | None
    trainer_cpus: list[int] | None

    def describe(self) -> str:
        def side(cpus: list[int] | None) -> str:
            return "all cores" if cpus is None else f"cores {','.join(map(str, cpus))}"

        return f"engine on {side(self.engine_cpus)}, trainer on {side(self.trainer_cpus)}"


def _explicit(spec: CpuSpec, allowed: Sequence[int], field: str) -> list[int] | None:
    if isinstance(spec, str):
        return None
    cpus = sorted(set(spec))
    outside = [cpu for cpu in cpus if cpu not in allowed]
    if not cpus or outside:
        raise ValueError(
            f"{field}: cores {outside or cpus} are not ones this process may use (allowed: {list(allowed)})"
        )
    return cpus


def plan_cpu_split(
    allowed: Sequence[int], engine: CpuSpec, trainer: CpuSpec, *, engine_on_cpu: bool
) -> CpuSplit:
    """The cores of the engine and of the trainer, from the two specs and the cores allowed here."""
    allowed = sorted(set(allowed))
    engine_cpus = _explicit(engine, allowed, "cpu.engine_cpus")
    trainer_cpus = _explicit(trainer, allowed, "cpu.trainer_cpus")
    if engine == "auto" and trainer == "auto":
        if not engine_on_cpu or len(allowed) < 2:
            return CpuSplit(None, None)
        half = (len(allowed) + 1) // 2
        return CpuSplit(allowed[:half], allowed[half:])
    # One side auto, the other given: auto takes the cores the other side leaves (all, if none).
    if engine == "auto":
        rest = [cpu for cpu in allowed if cpu not in (trainer_cpus or [])]
        engine_cpus = rest if engine_on_cpu and trainer_cpus is not None and rest else None
    if trainer == "auto":
        rest = [cpu for cpu in allowed if cpu not in (engine_cpus or [])]
        trainer_cpus = rest if engine_cpus is not None and rest else None
    return CpuSplit(engine_cpus, trainer_cpus)


def engine_bind_env(engine_cpus: list[int] | None) -> dict[str, str]:
    """The environment the vLLM CPU engine must start with to use exactly `engine_cpus` ({}: vLLM's default)."""
    if engine_cpus is None:
        return {}
    return {ENGINE_BIND_VAR: ",".join(str(cpu) for cpu in engine_cpus)}


@contextlib.contextmanager
def pinned(cpus: list[int] | None) -> Iterator[None]:
    """Run the calling thread (and the torch threads it starts) on `cpus` with one torch thread per core.

    Thread-level on Linux (`sched_setaffinity(0)` is the calling thread), so the event loop and the
    other threads of the process keep every core; both settings are restored afterwards."""
    if cpus is None:
        yield
        return
    import torch

    affinity_before, threads_before = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        os.sched_setaffinity(0, affinity_before)


def engine_runs_on_cpu() -> bool:
    """Whether the rollout engine will run on the CPU (no CUDA device here)."""
    import torch

    return not torch.cuda.is_available()


def split_for_run(engine: CpuSpec, trainer: CpuSpec) -> CpuSplit:
    """The split for this process on this machine."""
    return plan_cpu_split(sorted(os.sched_getaffinity(0)), engine, trainer, engine_on_cpu=engine_runs_on_cpu())
