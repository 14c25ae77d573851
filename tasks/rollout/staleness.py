"""The maximum-staleness gate: when the rollout service may start another group.

Staleness of a trajectory = the trainer version that consumes it - the policy version of its oldest
token; the trainer only takes trajectories with staleness <= k (`rollout.max_staleness`). Two ways
rollout can produce trajectories that would break that bound, and one rule against each:

- **Ahead**: rollout produces faster than the trainer consumes. Trajectories pile up in the store
  and age there. The service counts the trajectories it has started (written or in flight) and
  starts a group only while that count is below what the trainer will have consumed k versions
  from now: `(trainer_version + k + 1) * batch_size`. With k = 0 this is synchronous RL (one batch
  is produced, the trainer consumes it, the next is produced); larger k lets rollout run up to k
  batches ahead (AReaL's bound on in-flight work, arXiv:2505.24298).
- **Behind**: the engine's weights lag the trainer by more than k versions (a slow or failing weight
  sync). Everything sampled now would be stale on arrival: the service waits for a swap.

The gate is applied when a group starts, never to the members of a started group: a group the
trainer is waiting for is always completed (no deadlock when batch_size is not a multiple of the
group size). It can overshoot by at most one group.

**Released capacity.** The count above assumes every started trajectory is trained some day. One
that can no longer be (its min_policy_version + k < trainer version, e.g. a group held back by a
straggler until it is too stale) never will be, so it stops counting: without that, every expired
trajectory would shrink the pipeline for the rest of the run. The service releases a trajectory
when it finds it too stale once written (`too_stale`), or, for one written in time, when the
trainer's lineage shows it went unconsumed through its last trainable version (`settle`). Only the
count changes: the trainer's own staleness filter is what keeps the bound strict.

Note: the engine's version cannot run ahead of the trainer's (its weights come from the trainer),
so "engine version - trainer version > k" never fires; the rule is on produced trajectories.

The trainer's version comes from a hook: any callable returning an int (or an awaitable of one),
e.g. the trainer's own counter, or `LineageTrainerVersion(store)`, which reads the store's lineage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal

GateState = Literal["open", "ahead", "behind"]


@dataclass(frozen=True)
class StalenessBound:
    max_staleness: int  # k: versions
    batch_size: int  # trajectories the trainer consumes per version

    def __post_init__(self) -> None:
        if self.max_staleness < 0 or self.batch_size < 1:
            raise ValueError(
                f"max_staleness ({self.max_staleness}) must be >= 0 and batch_size ({self.batch_size}) >= 1"
            )


def produced_capacity(trainer_version: int, bound: StalenessBound) -> int:
    """Trajectories rollout may have started by the time the trainer is at `trainer_version`."""
    return (max(trainer_version, 0) + bound.max_staleness + 1) * bound.batch_size


def gate_state(
    *, produced: int, trainer_version: int, engine_version: int, bound: StalenessBound, released: int = 0
) -> GateState:
    """Whether a new group may start: "open", or why not ("ahead" / "behind", see the module doc).
    `released`: of the `produced`, those found too stale to be trained ever (they no longer count)."""
    if trainer_version - engine_version > bound.max_staleness:
        return "behind"
    if produced - released >= produced_capacity(trainer_version, bound):
        return "ahead"
    return "open"


def last_trainable_version(min_policy_version: int, max_staleness: int) -> int:
    """The newest trainer version that may still take a trajectory (staleness <= k)."""
    return min_policy_version + max_staleness


def too_stale(min_policy_versions: Iterable[int], trainer_version: int, max_staleness: int) -> int:
    """How many of these trajectories no trainer version from `trainer_version` on may take
    (trainer versions only grow)."""
    return sum(last_trainable_version(v, max_staleness) < trainer_version for v in min_policy_versions)


def settle(
    pending: Mapping[str, int], consumed: Collection[str], known_through: int, max_staleness: int
) -> tuple[dict[str, int], int]:
    """Written, still-trainable trajectories (`pending`: id -> min_policy_version), once the batches
    of every trainer version <= `known_through` are known (`consumed`: the ids in those not seen
    before): (the ones that may still be trained, how many never will be). A trajectory drops out
    when consumed; one whose last trainable version is <= known_through and was not consumed expired."""
    still: dict[str, int] = {}
    expired = 0
    for trajectory_id, version in pending.items():
        if trajectory_id in consumed:
            continue
        if last_trainable_version(version, max_staleness) <= known_through:
            expired += 1
        else:
            still[trajectory_id] = version
    return still, expired


class LineageTrainerVersion:
    """Trainer-version hook over a TrajectoryStore: 1 + the newest trainer version with a recorded
    consumption (0 before any), i.e. the version the trainer trains next.

    Probes `store.lineage(v)` upward from the last version seen (versions only grow), at most once
    every `refresh_s` seconds; in between it returns the cached value.
    """

    def __init__(self, store: Any, refresh_s: float = 0.25):
        self.store = store
        self.refresh_s = refresh_s
        self._next = 0
        self._checked_at: float | None = None

    def __call__(self) -> int:
        now = time.monotonic()
        if self._checked_at is not None and now - self._checked_at < self.refresh_s:
            return self._next
        while self.store.lineage(self._next).num_rows > 0:
            self._next += 1
        self._checked_at = now
        return self._next
