"""Where a new episode goes: a pure choice over a snapshot of the workers' slots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class WorkerView:
    """What routing needs to know about one worker."""

    ready: bool  # False while its process is (re)starting: requests sent there wait for it
    slot_busy: Sequence[bool]  # per slot: an episode holds it
    slot_keys: Sequence[str | None]  # per slot: environment key of the instance kept there (None: empty)

    @property
    def active(self) -> int:
        return sum(self.slot_busy)


def choose_slot(workers: Sequence[WorkerView], environment_key: str) -> tuple[int, int] | None:
    """(worker, slot) for a new episode of `environment_key`, or None when every slot is busy.

    Preference, in order: a ready worker (a restarting one costs a spawn); the worker with the fewest
    episodes (its steps run one at a time, so spreading is what buys throughput); a free slot that
    keeps an instance of the same environment (reused by reset, no construction); an empty slot (no
    instance to evict); then the lowest indices, so that the choice is deterministic.
    """
    best: tuple[tuple[int, int, int, int, int], tuple[int, int]] | None = None
    for worker_index, worker in enumerate(workers):
        active = worker.active
        for slot, (busy, key) in enumerate(zip(worker.slot_busy, worker.slot_keys)):
            if busy:
                continue
            reuse = 0 if key == environment_key else 1 if key is None else 2
            rank = (0 if worker.ready else 1, active, reuse, worker_index, slot)
            if best is None or rank < best[0]:
                best = (rank, (worker_index, slot))
    return None if best is None else best[1]


def environment_key(name: str, params: dict[str, Any]) -> str:
    """Stable identity of (environment, params): equal params in any key order give the same key."""
    return name + "|" + json.dumps(params, sort_keys=True, default=repr)
