"""One environment worker process as the parent's event loop sees it: spawn, requests, deadlines, loss.

A worker runs its requests one at a time in the order they were sent, so the parent knows, without
asking, which request is running: the oldest unanswered one, which started when the one before it
was answered (or when it was sent to an idle worker). Its deadline is that start + its timeout;
queueing behind other episodes of the same worker never counts against a step's timeout.

A worker is *lost* when a request runs past its deadline (it is killed), when its process dies, or
when the cluster closes. Losing it fails every request still queued there: the one that was running
with the kind of the event ("timeout" or "crash"), the others as "crash", each with a reason that
says what happened to the worker. The cluster then starts a replacement under the same index.
"""

from __future__ import annotations

import asyncio
import multiprocessing.context
import os
import signal
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from dartflow.tasks.envs.cluster_wire import (
    FrameDecoder,
    RequestDone,
    RequestFailed,
    ResetRequest,
    Shutdown,
    StepRequest,
    WorkerDying,
    WorkerReady,
    encode_frame,
)
from dartflow.tasks.envs.worker import EnvironmentFactory, run_worker

EpisodeErrorKind = Literal["timeout", "crash", "exception"]


class EpisodeError(RuntimeError):
    """An episode that cannot go on: the rollout service ends it with finish reason `error` and `.reason`."""

    def __init__(self, kind: EpisodeErrorKind, reason: str) -> None:
        super().__init__(f"[{kind}] {reason}")
        self.kind = kind
        self.reason = reason


@dataclass
class ClusterCounters:
    """Mutable tallies shared by every worker process of one cluster (the parent's side only)."""

    num_workers: int
    resets: int = 0
    steps: int = 0
    exceptions: int = 0
    timeouts: int = 0
    crashes: int = 0
    worker_busy_s: list[float] = field(default_factory=list)  # finished work, per worker index

    def __post_init__(self) -> None:
        self.worker_busy_s = [0.0] * self.num_workers


@dataclass
class _Pending:
    request_id: int
    what: str  # "reset of guess_number/train/3", for reasons
    is_step: bool
    timeout_s: float
    future: asyncio.Future


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class WorkerProcess(asyncio.Protocol):
    """One generation of worker `index`; a replacement is a new object with generation + 1."""

    def __init__(
        self,
        index: int,
        generation: int,
        factory: EnvironmentFactory | None,
        counters: ClusterCounters,
        on_lost: Callable[["WorkerProcess", EpisodeErrorKind], None],
    ) -> None:
        self.index = index
        self.generation = generation
        self.pid: int | None = None
        self.lost_reason: str | None = None
        self._factory = factory
        self._counters = counters
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._queue: deque[_Pending] = deque()
        self._head_started_at: float | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._last_words: str | None = None
        self._socket_closed = False
        self._unsent: list[bytes] = []  # frames of this loop iteration, or sent before the socket was wired

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.pid})" if self.pid else f"worker {self.index}"

    @property
    def is_ready(self) -> bool:
        return self._ready.done() and self.lost_reason is None

    @property
    def was_ready(self) -> bool:
        """It reported ready at some point (it may be lost since)."""
        return self._ready.done() and not self._ready.cancelled() and self._ready.exception() is None

    def busy_in_progress_s(self) -> float:
        return 0.0 if self._head_started_at is None else self._loop.time() - self._head_started_at

    async def start(self, context: multiprocessing.context.SpawnContext, timeout_s: float) -> None:
        """Spawn the process and wait for it to report ready; on failure the worker is lost and this raises."""
        parent_socket, child_socket = socket.socketpair()
        try:
            process = context.Process(
                target=run_worker,
                args=(child_socket, self._factory, os.getpid(), threading.current_thread() is threading.main_thread()),
                name=f"dartflow-env-worker-{self.index}",
            )
            process.start()
            self._process, self.pid = process, process.pid
        except BaseException:
            parent_socket.close()
            raise
        finally:
            child_socket.close()  # the child holds its own copy; ours would hide its EOF from us
        await self._loop.connect_accepted_socket(lambda: self, parent_socket)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            self.lose("crash", f"{self.name} did not report ready within {timeout_s:g} s")
        if self.lost_reason is not None:
            raise RuntimeError(self.lost_reason)

    def submit(self, request: ResetRequest | StepRequest, what: str, timeout_s: float) -> asyncio.Future:
        """Queue a request; the future gives the reset observation / StepResult or raises EpisodeError."""
        future = self._loop.create_future()
        if self.lost_reason is not None:
            future.set_exception(EpisodeError("crash", self._collateral_reason()))
            return future
        frame = encode_frame(request)  # before queueing: a request that cannot be sent must not hold the queue
        self._queue.append(_Pending(request.request_id, what, isinstance(request, StepRequest), timeout_s, future))
        self._write(frame)
        if len(self._queue) == 1 and self._ready.done():
            self._start_head_clock()
        return future

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._flush()

    def _write(self, frame: bytes) -> None:
        # Frames wait for the end of this loop iteration and go out in one send: a send wakes the
        # worker, and with many episodes stepping at once one wake-up per frame cost more than the step.
        self._unsent.append(frame)
        if len(self._unsent) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._transport is None or not self._unsent:
            return  # connection_made flushes what a replacement was sent before its socket was wired
        if not self._socket_closed:
            self._transport.write(b"".join(self._unsent))  # buffered by asyncio: never blocks the loop
        self._unsent.clear()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except Exception as exc:  # e.g. a result whose class the parent cannot import
            self.lose("crash", f"{self.name} sent a message the parent cannot read: {exc!r}")
            return
        for message in messages:
            if self.lost_reason is None:
                self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._socket_closed = True
        if self.lost_reason is None:
            self._loop.create_task(self._report_death())

    def _on_message(self, message: Any) -> None:
        if isinstance(message, WorkerReady):
            self.pid = message.pid
            self._ready.set_result(None)
            if self._queue:
                self._start_head_clock()
        elif isinstance(message, (RequestDone, RequestFailed)):
            self._on_answer(message)
        elif isinstance(message, WorkerDying):
            self._last_words = message.error

    def _on_answer(self, answer: RequestDone | RequestFailed) -> None:
        head = self._queue.popleft()
        if head.request_id != answer.request_id:
            self._queue.appendleft(head)
            self.lose("crash", f"{self.name} answered request {answer.request_id} while {head.request_id} was running")
            return
        self._deadline.cancel()
        self._head_started_at = None
        self._counters.worker_busy_s[self.index] += answer.busy_s
        if isinstance(answer, RequestDone):
            if head.is_step:
                self._counters.steps += 1
            else:
                self._counters.resets += 1
            _resolve(head.future, answer.value)
        else:
            self._counters.exceptions += 1
            reason = f"the {head.what} raised inside the environment: {answer.error}"
            _fail(head.future, EpisodeError("exception", reason))
        if self._queue:
            self._start_head_clock()

    def _start_head_clock(self) -> None:
        head = self._queue[0]
        self._head_started_at = self._loop.time()
        self._deadline = self._loop.call_at(self._head_started_at + head.timeout_s, self._on_deadline, head.request_id)

    def _on_deadline(self, request_id: int) -> None:
        if self.lost_reason is None and self._queue and self._queue[0].request_id == request_id:
            head = self._queue[0]
            reason = f"the {head.what} ran past its {head.timeout_s:g} s timeout; {self.name} was killed and replaced"
            self.lose("timeout", reason)

    async def _report_death(self) -> None:
        await _wait_for_exit(self._process, timeout_s=5.0)
        if self.lost_reason is not None:
            return
        if not self._ready.done():
            when = " before it was ready"
        else:
            when = f" while running the {self._queue[0].what}" if self._queue else ""
        reason = f"{self.name} died{when} ({describe_exit(self._process.exitcode)})"
        if self._last_words:
            reason += f"; its last words: {self._last_words}"
        self.lose("crash", reason)

    def lose(self, kind: EpisodeErrorKind, reason: str) -> None:
        """Kill the process (if alive) and fail every queued request; idempotent."""
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self._counters.worker_busy_s[self.index] += self.busy_in_progress_s()
        self._head_started_at = None
        if self._deadline is not None:
            self._deadline.cancel()
        if self._process is not None and self._process.exitcode is None:
            self._process.kill()
        if self._transport is not None:
            self._transport.abort()
        if kind == "timeout":
            self._counters.timeouts += 1
        else:
            self._counters.crashes += 1
        running = self._queue[0] if self._ready.done() and self._queue else None
        for pending in self._queue:
            if pending is running:
                error = EpisodeError(kind, reason)
            elif not self._ready.done():
                error = EpisodeError("crash", f"the worker this episode was sent to could not start: {reason}")
            else:
                error = EpisodeError("crash", self._collateral_reason())
            _fail(pending.future, error)
        self._queue.clear()
        if not self._ready.done():
            self._ready.set_exception(RuntimeError(reason))
            self._ready.exception()  # retrieved: start() reads lost_reason instead
        self._on_lost(self, kind)

    def _collateral_reason(self) -> str:
        return f"this episode's environment instance lived on {self.name}, which was lost: {self.lost_reason}"

    async def shutdown(self, grace_s: float) -> None:
        """Ask the process to close its environments and exit; kill it after `grace_s`. Always reaps it."""
        if self.lost_reason is None:
            self._write(encode_frame(Shutdown()))
            self.lost_reason = "the environment cluster was closed"
            for pending in self._queue:
                _fail(pending.future, EpisodeError("crash", self._collateral_reason()))
            self._queue.clear()
            if self._deadline is not None:
                self._deadline.cancel()
            if not self._ready.done():
                self._ready.set_exception(RuntimeError(self.lost_reason))
                self._ready.exception()
        if self._process is None:
            return
        await _wait_for_exit(self._process, grace_s)
        if self._process.exitcode is None:
            self._process.kill()
            await _wait_for_exit(self._process, timeout_s=10.0)
        if self._transport is not None:
            self._transport.abort()

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit, a loop that is gone): SIGKILL and reap."""
        if self._process is not None and self._process.exitcode is None:
            self._process.kill()
            self._process.join(timeout=5.0)


async def _wait_for_exit(process: multiprocessing.process.BaseProcess | None, timeout_s: float) -> None:
    # `exitcode` reaps with waitpid(WNOHANG): polling keeps the loop free without a helper thread.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while process is not None and process.exitcode is None and loop.time() < deadline:
        await asyncio.sleep(0.01)


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():  # the caller may have been cancelled; the worker still ran the request
        future.set_result(value)


def _fail(future: asyncio.Future, error: EpisodeError) -> None:
    if not future.done():
        future.set_exception(error)
