"""The rollout service: keeps `concurrent_episodes` episodes in flight and streams groups to the store.

    service = RolloutService.from_config(config, engine=engine, cluster=cluster, store=store,
                                         trainer_version=LineageTrainerVersion(store))
    counters = await service.run(num_trajectories=256)     # or run() until the sampler is exhausted
    mlflow.log_metrics(service.metrics())

Problems come from a GroupSampler (sampler.py; curation steers it): each group is `size` episodes of
one problem sharing a group id. Members of started groups (and requeued episodes) start first, so
groups complete as soon as possible; a new group starts when a slot is free and the staleness gate
(staleness.py) is open.

**What is streamed: whole groups.** A group is handed to the store the moment its last member
ends, not at the end of a batch. The trainer's advantages are computed inside a group,
so it can use a group only once it is complete; writing members one by one would make every reader
wait for and re-assemble groups, and would let a batch hold half a group. The price: a group lands
when its slowest member ends. Appends run on one background thread, so a slow commit never stalls
generation; groups that finish while a commit runs go together into the next one (a LanceDB
commit costs ~5 ms whatever its size), each group whole in one commit.

**Requeue.** An episode interrupted by a weight swap (in_flight_on_swap = "requeue") is not written:
it is run again from the start, same problem and group, before anything new starts (metadata
`attempt` counts its reruns; `rollout/requeued` counts them all).

**Released capacity.** A started trajectory that turns out never trainable stops counting against
the gate (staleness.py): at hand-off to the writer, members already too stale for the trainer's
current version are released at once; the others wait (by id) until the trainer is two versions past
their last trainable one, and are released if the sink's `lineage` (a TrajectoryStore's) does not
show them consumed by then. A sink without `lineage` gets only the hand-off rule.
`rollout/too_stale` counts the released trajectories.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dartflow.storage.records import TrajectoryRecord
from dartflow.tasks.envs.problems import stable_seed
from dartflow.tasks.rollout.episode import EpisodeSettings, run_episode
from dartflow.tasks.rollout.metrics import OccupancyClock, RolloutCounters, rollout_metrics
from dartflow.tasks.rollout.prompts import ChatPrompter, system_prompt_from
from dartflow.tasks.rollout.sampler import GroupSampler, GroupSpec, UniformSampler
from dartflow.tasks.rollout.staleness import (
    StalenessBound,
    gate_state,
    last_trainable_version,
    produced_capacity,
    settle,
    too_stale,
)

if TYPE_CHECKING:
    from dartflow.config import RunConfig

logger = logging.getLogger(__name__)
TrainerVersionHook = Callable[[], "int | Awaitable[int]"]


@dataclass
class _Group:
    spec: GroupSpec
    ordinal: int  # groups started before it
    records: list[TrajectoryRecord | None]
    next_member: int = 0

    @property
    def complete(self) -> bool:
        return all(record is not None for record in self.records)


@dataclass(frozen=True)
class _Job:
    group: _Group
    member: int
    attempt: int = 0


@dataclass
class _Gate:
    state: str = "open"
    closed_since: float | None = None
    trainer_version: int | None = None


LINEAGE_RETRY_S = 0.25  # how soon a trainer version whose batch was not recorded yet is read again

class RolloutService:
    """Runs episodes on a started engine and cluster; appends finished groups to `sink`.

    `sink`: a TrajectoryStore, or anything with `append(records) -> ids`. `trainer_version`: a hook
    for the staleness gate (None: no gate), with `max_staleness` and `batch_size` (trajectories per
    trainer version); `already_produced`: trajectories of this run written before this service
    existed (a resumed run), counted by the gate. `seed` makes sampling reproducible per (group
    ordinal, member, attempt); None leaves it to the engine. `run` may be called again after it
    returns (e.g. one batch at a time); counters and metrics accumulate.
    """

    def __init__(
        self,
        *,
        engine: Any,
        cluster: Any,
        sink: Any,
        sampler: GroupSampler,
        settings: EpisodeSettings,
        prompter: ChatPrompter | None = None,
        concurrent_episodes: int = 16,
        max_staleness: int | None = None,
        batch_size: int | None = None,
        trainer_version: TrainerVersionHook | None = None,
        already_produced: int = 0,
        run_id: str | None = None,
        seed: int | None = None,
        poll_s: float = 0.1,
    ):
        if concurrent_episodes < 1:
            raise ValueError(f"concurrent_episodes must be >= 1, got {concurrent_episodes}")
        if trainer_version is not None and (max_staleness is None or batch_size is None):
            raise ValueError("a trainer_version hook needs max_staleness and batch_size (the gate's bound)")
        self.engine, self.cluster, self.sink, self.sampler = engine, cluster, sink, sampler
        self.settings = settings
        self.prompter = prompter if prompter is not None else ChatPrompter.from_model_dir(engine.model_dir)
        self.concurrent_episodes = concurrent_episodes
        self.bound = StalenessBound(max_staleness, batch_size) if trainer_version is not None else None
        self.trainer_version_hook = trainer_version
        self.run_id, self.seed, self.poll_s = run_id, seed, poll_s
        self.counters = RolloutCounters()
        self.clock = OccupancyClock()
        self.written_ids: list[str] = []
        self._produced = already_produced  # trajectories started (written or in flight), reruns not counted
        self._gate = _Gate()
        self._groups_started = 0
        self._current: _Group | None = None
        self._requeued: deque[_Job] = deque()
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._failure: BaseException | None = None
        self._changed: asyncio.Event | None = None
        self._started_at: float | None = None
        self._io: ThreadPoolExecutor | None = None  # the writer thread, for the length of a run
        self._pending_groups: list[list[TrajectoryRecord]] = []  # finished, not yet handed to the writer
        self._write_in_flight: asyncio.Future | None = None
        self._groups_in_write = 0
        # Released capacity (module doc): trajectories found never trainable, and the written ones
        # that may still be trained (id -> min_policy_version) until the lineage settles them.
        self._released = 0
        self._pending: dict[str, int] = {}
        self._lineage_next: int | None = None  # the next trainer version whose lineage is read
        self._lineage_retry_at = 0.0  # perf_counter time before which an unrecorded version is not read again

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        *,
        engine: Any,
        cluster: Any,
        store: Any,
        sampler: GroupSampler | None = None,
        trainer_version: TrainerVersionHook | None = None,
        **overrides: Any,
    ) -> RolloutService:
        rollout = config.rollout
        settings = dict(
            settings=EpisodeSettings.from_config(rollout),
            concurrent_episodes=rollout.concurrent_episodes,
            max_staleness=rollout.max_staleness,
            batch_size=config.training.batch_size,
            run_id=config.run_name,
        )
        if "prompter" not in overrides:
            settings["prompter"] = ChatPrompter.from_model_dir(
                engine.model_dir, system_prompt=system_prompt_from(rollout.system_prompt)
            )
        return cls(
            engine=engine,
            cluster=cluster,
            sink=store,
            sampler=sampler if sampler is not None else UniformSampler.from_config(config),
            trainer_version=trainer_version,
            **{**settings, **overrides},
        )

    # ---- control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Start nothing new; `run` returns once the episodes in flight have ended and been written."""
        self._stopping = True
        self._notify()

    async def run(self, num_trajectories: int | None = None) -> RolloutCounters:
        """Run until `num_trajectories` trajectories are written (the last group is cut to fit), the
        sampler returns None, or `stop()`; return the counters. A failure (engine, store) cancels
        the episodes in flight and is raised."""
        self._changed = asyncio.Event()
        self._stopping, self._failure = False, None
        self._started_at = self._started_at or time.perf_counter()
        self.clock.set(self.clock.level, time.perf_counter())
        quota = None if num_trajectories is None else self._produced + num_trajectories
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-writer")
        try:
            await self._schedule(quota)
        except BaseException:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._current, self._requeued = None, deque()  # a group that lost members is never written
            raise
        finally:
            self.clock.advance(time.perf_counter())
            self._io.shutdown(wait=False)  # a write still running (after a failure) finishes on its own
        return self.counters

    @property
    def produced(self) -> int:
        """Trajectories started so far (written or in flight; reruns not counted), `already_produced` included."""
        return self._produced

    @property
    def released(self) -> int:
        """Of `produced`, trajectories found too stale ever to be trained: they no longer count against the gate."""
        return self._released

    def room(self, trainer_version: int) -> int | None:
        """Trajectories the staleness gate lets start while the trainer is at `trainer_version` (None:
        no gate). A `run(n)` asking for more waits for the trainer: in sync mode, where the trainer
        waits for that run, ask for at most this."""
        if self.bound is None:
            return None
        return max(produced_capacity(trainer_version, self.bound) - (self._produced - self._released), 0)

    def metrics(self) -> dict[str, float]:
        """`rollout/` metrics since the service first ran."""
        now = time.perf_counter()
        self.clock.advance(now)
        gated = {"rollout/too_stale": float(self._released)} if self.bound is not None else {}
        return gated | rollout_metrics(
            self.counters,
            self.clock,
            wall_s=now - self._started_at if self._started_at is not None else 0.0,
            concurrent_episodes=self.concurrent_episodes,
            policy_version=self.engine.policy_version,
            trainer_version=self._gate.trainer_version,
            last_swap_s=getattr(self.engine, "last_swap_s", None),
        )

    # ---- scheduling -------------------------------------------------------------------------------

    async def _schedule(self, quota: int | None) -> None:
        while True:
            if self._failure is not None:
                raise self._failure
            if len(self._tasks) >= self.concurrent_episodes:
                await self._wait_for_change()
                continue
            job = self._next_started_job()
            if job is not None:
                self._launch(job)
                continue
            if self._stopping or (quota is not None and self._produced >= quota):
                if not self._tasks and not self._requeued and not self._writing:
                    return
                await self._wait_for_change()
                continue
            if await self._gate_closed():
                await self._wait_for_change(timeout_s=self.poll_s)
                continue
            spec = self.sampler.next_group()
            spec = await spec if inspect.isawaitable(spec) else spec
            if spec is None:
                self._stopping = True
                continue
            self._start_group(spec, quota)

    def _next_started_job(self) -> _Job | None:
        """A requeued episode, else the next member of the group being started."""
        if self._requeued:
            return self._requeued.popleft()
        group = self._current
        if group is not None and group.next_member < len(group.records):
            group.next_member += 1
            self._produced += 1
            return _Job(group, group.next_member - 1)
        return None

    def _start_group(self, spec: GroupSpec, quota: int | None) -> None:
        size = spec.size if quota is None else min(spec.size, quota - self._produced)
        self._current = _Group(spec, self._groups_started, [None] * size)
        self._groups_started += 1
        self.counters.groups_started += 1

    async def _gate_closed(self) -> bool:
        """Ask the trainer-version hook and the gate; keep the wait counters."""
        if self.bound is None:
            return False
        version = await self._trainer_version()
        await self._settle(version)
        state = gate_state(
            produced=self._produced,
            trainer_version=version,
            engine_version=self.engine.policy_version,
            bound=self.bound,
            released=self._released,
        )
        now = time.perf_counter()
        gate = self._gate
        gate.trainer_version = version
        if state != "open" and gate.closed_since is None:
            self.counters.gate_waits[state] += 1
            gate.closed_since = now
            logger.info("staleness gate closed (%s): trainer v%d, engine v%d, %d produced, %d released",
                        state, version, self.engine.policy_version, self._produced, self._released)
        elif state == "open" and gate.closed_since is not None:
            self.counters.gate_wait_seconds += now - gate.closed_since
            gate.closed_since = None
        gate.state = state
        return state != "open"

    async def _trainer_version(self) -> int:
        version = self.trainer_version_hook()
        return int(await version if inspect.isawaitable(version) else version)

    # ---- released capacity (module doc) ------------------------------------------------------------

    @property
    def _reads_lineage(self) -> bool:
        return callable(getattr(self.sink, "lineage", None))

    def _release_on_handoff(self, records: list[TrajectoryRecord], trainer_version: int) -> None:
        """Release the members no trainer version from `trainer_version` on may take (the trainer
        cannot have taken them yet: they are not written); keep the others' ids for `_settle`."""
        k = self.bound.max_staleness
        versions = {record.trajectory_id: min_policy_version(record) for record in records}
        expired = too_stale(versions.values(), trainer_version, k)
        if expired:
            self._release(expired, f"written at trainer v{trainer_version}")
        if self._reads_lineage:
            self._pending.update(
                (i, v) for i, v in versions.items() if last_trainable_version(v, k) >= trainer_version
            )

    async def _settle(self, trainer_version: int) -> None:
        """Read the lineage of every trainer version before `trainer_version` not read yet, up to the
        first one not recorded yet (the trainer's version can move before its batch is recorded; a
        recorded batch is final), and release the pending trajectories that went unconsumed through
        their last trainable version. Released as soon as the trainer has moved past that version:
        a step later, they would hold capacity exactly while the trainer waits for a batch."""
        if self._lineage_next is None:  # before the first group: nothing written can be in older versions
            self._lineage_next = trainer_version
        if not self._reads_lineage or self._lineage_next > trainer_version - 1:
            return
        if time.perf_counter() < self._lineage_retry_at:  # that version was not recorded a moment ago
            return
        consumed: set[str] = set()
        loop = asyncio.get_running_loop()
        start = self._lineage_next
        while self._lineage_next <= trainer_version - 1:
            rows = await loop.run_in_executor(self._io, self.sink.lineage, self._lineage_next)
            if not rows.num_rows:
                self._lineage_retry_at = time.perf_counter() + LINEAGE_RETRY_S
                break
            consumed.update(rows["trajectory_id"].to_pylist())
            self._lineage_next += 1
        if self._lineage_next == start:
            return
        self._pending, expired = settle(self._pending, consumed, self._lineage_next - 1, self.bound.max_staleness)
        if expired:
            self._release(expired, f"never consumed through trainer v{self._lineage_next - 1}")

    def release(self, trajectory_ids: list[str], why: str = "passed over by the trainer") -> int:
        """Release written trajectories the trainer will never take (e.g. groups dynamic sampling
        passes over): they stop holding the staleness gate's capacity. Ids not pending (already
        released or consumed, or never written by this service) are ignored; returns how many were
        released. Call it from the event loop's thread."""
        count = sum(1 for i in trajectory_ids if self._pending.pop(i, None) is not None)
        if count:
            self._release(count, why)
            self._notify()
        return count

    def _release(self, count: int, why: str) -> None:
        self._released += count
        logger.info("staleness gate: %d trajectories too stale to be trained (%s), %d released in all",
                    count, why, self._released)

    async def _wait_for_change(self, timeout_s: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            pass
        self._changed.clear()

    @property
    def _writing(self) -> bool:
        return self._write_in_flight is not None or bool(self._pending_groups)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # ---- episodes -----------------------------------------------------------------------------------

    def _launch(self, job: _Job) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"episode {job.group.spec.problem.problem_id}")
        self._tasks.add(task)
        self.counters.episodes_started += 1
        self.clock.set(len(self._tasks), time.perf_counter())
        task.add_done_callback(self._job_done)

    async def _run_job(self, job: _Job) -> None:
        spec = job.group.spec
        seed = None
        if self.seed is not None:
            seed = stable_seed("episode", self.seed, job.group.ordinal, job.member, job.attempt)
        record = await run_episode(
            spec.problem,
            engine=self.engine,
            cluster=self.cluster,
            prompter=self.prompter,
            settings=self.settings,
            group_id=spec.group_id,
            params=spec.params,
            max_turns=spec.max_turns,
            seed=seed,
            run_id=self.run_id,
            metadata={
                **spec.metadata,
                "group_size": len(job.group.records),
                "member": job.member,
                "attempt": job.attempt,
            },
        )
        if record.finish_reason == "interrupted":
            self.counters.add_interrupted()
            self._requeued.append(_Job(job.group, job.member, job.attempt + 1))
            return
        self.counters.add_trajectory(record)
        job.group.records[job.member] = record
        if job.group.complete:
            if self.bound is not None:  # the trainer's version before the group can be read
                self._release_on_handoff(job.group.records, await self._trainer_version())
            self._write(job.group)

    def _job_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self.clock.set(len(self._tasks), time.perf_counter())
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
        self._notify()

    # ---- writing ------------------------------------------------------------------------------------

    def _write(self, group: _Group) -> None:
        """Queue a finished group for the writer thread; start a write unless one is running."""
        self._pending_groups.append(list(group.records))
        if self._write_in_flight is None:
            self._flush()

    def _flush(self) -> None:
        """Append every queued group in one commit (group commit: under load, groups that finish
        while a commit runs share the next one; when idle, each group is written at once)."""
        groups, self._pending_groups = self._pending_groups, []
        self._groups_in_write = len(groups)
        future = asyncio.get_running_loop().run_in_executor(self._io, self._append, groups)
        self._write_in_flight = future
        future.add_done_callback(self._write_done)

    def _append(self, groups: list[list[TrajectoryRecord]]) -> list[str]:
        started = time.perf_counter()
        ids = self.sink.append([record for group in groups for record in group])
        self.counters.write_seconds += time.perf_counter() - started
        return list(ids)

    def _write_done(self, future: asyncio.Future) -> None:
        self._write_in_flight = None
        if future.cancelled():
            return
        if future.exception() is not None:
            self._failure = self._failure or future.exception()
        else:
            ids = future.result()
            self.written_ids.extend(ids)
            self.counters.writes += 1
            self.counters.groups_written += self._groups_in_write
            self.counters.trajectories_written += len(ids)
            if self._pending_groups:
                self._flush()
        self._notify()

    def close(self) -> None:
        """Nothing to release between runs (kept for symmetry with the engine and cluster)."""


def min_policy_version(record: TrajectoryRecord) -> int:
    """The policy version of a record's oldest token, as the store derives it."""
    if record.min_policy_version is not None:
        return record.min_policy_version
    return min(turn.min_policy_version for turn in record.turns)
