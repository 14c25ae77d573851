"""The environment cluster: worker processes that host environment instances, behind an async API.

    async with EnvironmentCluster.from_config(config) as cluster:
        async with cluster.episode(problem) as episode:
            prompt = episode.observation                      # from reset
            result = await episode.step(action_text)          # StepResult, or raises EpisodeError

Each worker process hosts up to `slots_per_worker` environment instances, one per episode in flight
there; instances are reused across episodes (via reset) when the environment and params match. The
steps of one worker run one at a time; different workers run in parallel. `episode()` waits (FIFO)
while every slot is taken, so callers may open hundreds of episodes at once.

Failures end an episode, never the cluster: an exception inside the environment raises
`EpisodeError(kind="exception")` and the worker goes on; a reset/step past its timeout kills the
worker (`kind="timeout"`); a worker that dies (`kind="crash"`) is replaced under the same index.
Every other episode living on a lost worker loses its environment instance too: its pending or next
request raises `EpisodeError(kind="crash")` whose reason names the worker and what happened to it.

Workers are started with the spawn start method (the parent may run vLLM's threads; fork is unsafe
there); spawn re-imports the parent's `__main__` in each worker, so scripts need the usual
`if __name__ == "__main__":` guard and a cheap top level. No worker outlives the cluster: `close()`
(also on cancellation/KeyboardInterrupt through `async with`) shuts them down and kills stragglers,
an atexit hook kills what a never-closed cluster left, and workers exit when their parent dies.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import multiprocessing
import multiprocessing.util  # noqa: F401  (imported first so that our atexit hook runs before its join)
import pickle
import weakref
from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

from dartflow.tasks.envs.cluster_process import ClusterCounters, EpisodeError, WorkerProcess
from dartflow.tasks.envs.cluster_routing import WorkerView, choose_slot, environment_key
from dartflow.tasks.envs.cluster_stats import ClusterStats
from dartflow.tasks.envs.cluster_wire import ResetRequest, StepRequest
from dartflow.tasks.envs.protocol import Problem, StepResult
from dartflow.tasks.envs.worker import EnvironmentFactory

if TYPE_CHECKING:
    from dartflow.config import EnvironmentSpec, RunConfig

__all__ = ["ClusterClosedError", "ClusterStats", "EnvironmentCluster", "Episode", "EpisodeError"]

_LIVE_CLUSTERS: "weakref.WeakSet[EnvironmentCluster]" = weakref.WeakSet()
_MAX_RESTART_DELAY_S = 30.0


class ClusterClosedError(RuntimeError):
    """`episode()` on a cluster that is not running (not started yet, or closed while waiting)."""


class Episode:
    """One episode on one slot of one worker; lives inside `cluster.episode(problem)`."""

    def __init__(self, cluster: "EnvironmentCluster", worker: WorkerProcess, slot: int, problem: Problem) -> None:
        self.problem = problem
        self.observation = ""  # set from reset before the caller sees the episode
        self.worker_index = worker.index
        self.slot = slot
        self.steps = 0
        self.error: EpisodeError | None = None  # once set, every further request raises it again
        self.ended = False
        self._cluster = cluster
        self._worker = worker

    async def step(self, action_text: str) -> StepResult:
        if self.ended:  # its slot may already host another episode
            raise RuntimeError(f"episode of {self.problem.problem_id} has ended: step it inside `cluster.episode()`")
        self.steps += 1
        request = StepRequest(self._cluster._next_request_id(), self.slot, action_text)
        what = f"step {self.steps} of {self.problem.problem_id}"
        return await self._request(request, what, self._cluster.step_timeout_s)

    async def _request(self, request: ResetRequest | StepRequest, what: str, timeout_s: float) -> Any:
        if self.error is not None:
            raise self.error
        try:
            return await self._worker.submit(request, what, timeout_s)
        except EpisodeError as error:
            self.error = error
            self._cluster._on_episode_error(self, error)
            raise


class EnvironmentCluster:
    def __init__(
        self,
        environments: Iterable["EnvironmentSpec | tuple[str, dict[str, Any]]"],
        *,
        num_workers: int = 2,
        slots_per_worker: int = 8,
        step_timeout_s: float = 30.0,
        reset_timeout_s: float = 60.0,
        environment_factory: EnvironmentFactory | None = None,
        start_timeout_s: float = 120.0,
        shutdown_grace_s: float = 5.0,
    ) -> None:
        """`environments`: (name, params) pairs or config EnvironmentSpecs; problems are routed by
        `problem.environment`. `environment_factory(name, params)` builds an instance inside a worker
        (default: the registry's `make_environment`); it must be importable (pickled by reference)."""
        if num_workers < 1 or slots_per_worker < 1:
            raise ValueError(f"num_workers ({num_workers}) and slots_per_worker ({slots_per_worker}) must be >= 1")
        if step_timeout_s <= 0 or reset_timeout_s <= 0:
            raise ValueError(f"timeouts must be > 0 (step {step_timeout_s}, reset {reset_timeout_s})")
        if environment_factory is not None:
            try:  # workers receive it pickled: only a module-level function (by reference) survives that
                pickle.dumps(environment_factory)
            except Exception as exc:
                raise TypeError(
                    f"environment_factory {environment_factory!r} cannot be sent to worker processes ({exc}); "
                    "use a module-level function"
                ) from None
        self._environments = _environment_table(environments)
        self.num_workers = num_workers
        self.slots_per_worker = slots_per_worker
        self.step_timeout_s = step_timeout_s
        self.reset_timeout_s = reset_timeout_s
        self._factory = environment_factory
        self._registry_names: dict[str, str] = {}  # environment key -> name as the workers resolve it
        self._start_timeout_s = start_timeout_s
        self._shutdown_grace_s = shutdown_grace_s
        self._state = "new"  # -> "starting" -> "running" -> "closed"
        self._workers: list[WorkerProcess] = []
        self._lost_workers: list[WorkerProcess] = []  # still to be reaped
        self._slot_busy = [[False] * slots_per_worker for _ in range(num_workers)]
        self._slot_keys: list[list[str | None]] = [[None] * slots_per_worker for _ in range(num_workers)]
        self._start_failures = [0] * num_workers
        self._slot_waiters: deque[asyncio.Future] = deque()
        self._background: set[asyncio.Task] = set()
        self._counters = ClusterCounters(num_workers)
        self._request_ids = itertools.count()
        self._episodes = self._errors = self._restarts = 0
        self._started_at: float | None = None

    @classmethod
    def from_config(cls, config: "RunConfig", **overrides: Any) -> "EnvironmentCluster":
        settings = dict(
            num_workers=config.cluster.num_workers,
            slots_per_worker=config.cluster.slots_per_worker,
            step_timeout_s=config.cluster.step_timeout_s,
            reset_timeout_s=config.cluster.reset_timeout_s,
        )
        return cls(config.environments, **{**settings, **overrides})

    async def __aenter__(self) -> "EnvironmentCluster":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Spawn every worker and wait until all are ready; raises (after cleaning up) if one is not."""
        if self._state != "new":
            raise RuntimeError(f"cluster already {self._state}")
        if self._factory is None:  # a bad name or params fails here, before any process starts
            for name, configured in self._environments.items():
                for params in configured:
                    self._registry_name(name, params)
        self._state = "starting"
        self._loop = asyncio.get_running_loop()
        self._context = multiprocessing.get_context("spawn")
        self._started_at = self._loop.time()
        _LIVE_CLUSTERS.add(self)
        self._workers = [self._new_worker(index, generation=0) for index in range(self.num_workers)]
        try:
            await asyncio.gather(*(worker.start(self._context, self._start_timeout_s) for worker in self._workers))
        except BaseException:
            await self.close()
            raise
        self._state = "running"

    async def close(self) -> None:
        """Fail what is in flight, shut every worker down (kill after the grace period), reap them all."""
        if self._state == "closed":
            return
        self._state = "closed"
        while self._slot_waiters:
            _wake(self._slot_waiters.popleft())
        for task in list(self._background):
            task.cancel()
        try:
            await asyncio.gather(*(worker.shutdown(self._shutdown_grace_s) for worker in self._workers))
            await asyncio.gather(*(worker.shutdown(0.0) for worker in self._lost_workers))
        finally:  # also when close() itself is cancelled: nothing may outlive the cluster
            self.kill_now()

    def kill_now(self) -> None:
        """SIGKILL and reap every worker process, synchronously (no event loop needed)."""
        for worker in [*self._workers, *self._lost_workers]:
            worker.kill_now()
        _LIVE_CLUSTERS.discard(self)

    @asynccontextmanager
    async def episode(self, problem: Problem, params: dict[str, Any] | None = None) -> AsyncIterator[Episode]:
        """Reserve a slot (waiting while all are busy), reset an instance there, and hold it for the body.

        The instance is built from `problem.environment` and the params it was configured with;
        `params` overrides them (needed when one environment is configured twice, e.g. two levels)."""
        name, params, key = self._environment_of(problem, params)
        await self._wait_for_free_slot()
        chosen = choose_slot(self._worker_views(), key)
        assert chosen is not None, "a free slot was seen before routing"
        index, slot = chosen
        self._slot_busy[index][slot] = True
        self._slot_keys[index][slot] = key
        self._episodes += 1
        episode = Episode(self, self._workers[index], slot, problem)
        try:
            request = ResetRequest(self._next_request_id(), slot, name, params, key, problem)
            episode.observation = await episode._request(
                request, f"reset of {problem.problem_id}", self.reset_timeout_s
            )
            yield episode
        finally:
            episode.ended = True
            self._slot_busy[index][slot] = False
            self._wake_next_waiter()

    def stats(self) -> ClusterStats:
        """Cumulative counters since start; `later.since(earlier)` for an interval."""
        wall_s = 0.0 if self._started_at is None else self._loop.time() - self._started_at
        busy = list(self._counters.worker_busy_s)
        for worker in self._workers:
            busy[worker.index] += worker.busy_in_progress_s()
        counters = self._counters
        return ClusterStats(
            wall_s=wall_s,
            episodes=self._episodes,
            episodes_active=sum(map(sum, self._slot_busy)),
            resets=counters.resets,
            steps=counters.steps,
            errors=self._errors,
            exceptions=counters.exceptions,
            timeouts=counters.timeouts,
            crashes=counters.crashes,
            restarts=self._restarts,
            worker_busy_s=tuple(busy),
        )

    def worker_pids(self) -> list[int | None]:
        """Pid of each worker index's process while it serves (None while a replacement starts)."""
        return [worker.pid if worker.is_ready else None for worker in self._workers]

    # internals
    def _environment_of(self, problem: Problem, params: dict[str, Any] | None) -> tuple[str, dict[str, Any], str]:
        name = problem.environment
        if params is None:
            configured = self._environments.get(name, [])
            if not configured:
                hosted = ", ".join(sorted(self._environments))
                raise ValueError(
                    f"problem {problem.problem_id} is of environment {name!r}, which this cluster was not "
                    f"configured with (it has: {hosted}); pass params= to episode() to host it anyway"
                )
            if len(configured) > 1:
                raise ValueError(
                    f"environment {name!r} is configured {len(configured)} times with different params; "
                    f"pass the params of problem {problem.problem_id}'s spec to episode(params=...)"
                )
            params = configured[0]
        worker_name = name if self._factory is not None else self._registry_name(name, params)
        return worker_name, params, environment_key(worker_name, params)

    def _registry_name(self, name: str, params: dict[str, Any]) -> str:
        """Check (name, params) with the registry, once, and give the name a spawned worker resolves:
        a name registered with @register_environment in this process becomes its import path."""
        key = environment_key(name, params)
        if key not in self._registry_names:
            from dartflow.tasks.envs.registry import check_environment, environment_import_path

            check_environment(name, params)
            self._registry_names[key] = environment_import_path(name)
        return self._registry_names[key]

    def _worker_views(self) -> list[WorkerView]:
        return [
            WorkerView(worker.is_ready, self._slot_busy[worker.index], self._slot_keys[worker.index])
            for worker in self._workers
        ]

    async def _wait_for_free_slot(self) -> None:
        woken = False
        while self._state == "running" and not any(not busy for slots in self._slot_busy for busy in slots):
            waiter = self._loop.create_future()
            # Woken, but a newcomer took the slot first: wait at the head again, not behind everyone.
            (self._slot_waiters.appendleft if woken else self._slot_waiters.append)(waiter)
            woken = True
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next_waiter()  # we were woken for a slot we will not take: pass it on
                raise
        if self._state != "running":
            raise ClusterClosedError(f"the environment cluster is {self._state}, not running")

    def _wake_next_waiter(self) -> None:
        while self._slot_waiters:
            if _wake(self._slot_waiters.popleft()):
                return

    def _next_request_id(self) -> int:
        return next(self._request_ids)

    def _on_episode_error(self, episode: Episode, error: EpisodeError) -> None:
        self._errors += 1
        if error.kind == "exception":  # the worker dropped that instance
            self._slot_keys[episode.worker_index][episode.slot] = None

    def _new_worker(self, index: int, generation: int) -> WorkerProcess:
        return WorkerProcess(index, generation, self._factory, self._counters, self._on_worker_lost)

    def _on_worker_lost(self, worker: WorkerProcess, kind: str) -> None:
        self._slot_keys[worker.index] = [None] * self.slots_per_worker  # its instances died with it
        self._lost_workers.append(worker)
        self._spawn_background(worker.shutdown(0.0))  # reap the killed process
        if self._state != "running" or self._workers[worker.index] is not worker:
            return
        # A worker that never came up counts towards a back-off, so that one that cannot start
        # (a broken import, say) is not respawned in a tight loop; one that served resets it.
        self._start_failures[worker.index] = 0 if worker.was_ready else self._start_failures[worker.index] + 1
        replacement = self._new_worker(worker.index, worker.generation + 1)
        self._workers[worker.index] = replacement
        self._restarts += 1
        self._spawn_background(self._start_replacement(replacement, self._start_failures[worker.index]))

    async def _start_replacement(self, worker: WorkerProcess, failures: int) -> None:
        if failures:
            await asyncio.sleep(min(_MAX_RESTART_DELAY_S, 0.5 * 2 ** (failures - 1)))
        try:
            await worker.start(self._context, self._start_timeout_s)
        except Exception:
            pass  # lose() has already failed its requests and scheduled the next attempt

    def _spawn_background(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _environment_table(environments: Iterable[Any]) -> dict[str, list[dict[str, Any]]]:
    """name -> the distinct params it is configured with (usually one)."""
    table: dict[str, list[dict[str, Any]]] = {}
    for entry in environments:
        name, params = (entry.name, entry.params) if hasattr(entry, "name") else entry
        params = dict(params or {})
        if params not in table.setdefault(name, []):
            table[name].append(params)
    if not table:
        raise ValueError("the cluster needs at least one environment")
    return table


def _wake(waiter: asyncio.Future) -> bool:
    if waiter.done():
        return False
    waiter.set_result(None)
    return True


@atexit.register
def _kill_unclosed_clusters() -> None:
    for cluster in list(_LIVE_CLUSTERS):
        cluster.kill_now()
