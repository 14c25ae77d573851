"""Ctrl-C, SIGTERM and a cancellation in Prefect stop `dartflow train` cleanly; a second signal at once.

    summary = run_interruptibly(lambda: train_flow(...))  # raises RunInterrupted after a clean stop

The flow's event loop runs in a thread of its own; the main thread only waits for it and takes the
signals. The first SIGINT/SIGTERM (or the flow run turning Cancelling in Prefect) cancels the flow's
main task: the flow body unwinds through its `finally` (`close_run`: the training step in progress
finishes, engine and environment workers stop, the checkpoint on disk matches the store's lineage,
the MLflow run ends KILLED) and Prefect records the flow run as Crashed (Cancelled for a Prefect
cancellation). A second signal waits for nothing: it kills every child process and exits.
Exit status 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM; 130 for a Prefect cancel).

Why the loop is not in the main thread: Prefect's flow engine installs, in the main thread only, a
SIGTERM handler that raises TerminationSignal wherever that thread happens to be (inside an episode
task, vLLM's output handler...), which can leave the run waiting forever; and a second Ctrl-C raised
as KeyboardInterrupt inside the loop would still wait for every task and thread to end.

Why the ephemeral Prefect API is started here: Ctrl-C in a terminal signals the whole foreground
process group. The API server Prefect starts on first use is in it and would stop at once; every
state the unwinding flow then reports retries for about a minute (PREFECT_CLIENT_MAX_RETRIES with
backoff). `start_prefect_api` starts it outside the group, tied to this process's life.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import signal
import subprocess
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Coroutine

PREFECT_CANCEL_POLL_S = 5.0
_PR_SET_PDEATHSIG = 1


class RunInterrupted(KeyboardInterrupt):
    """The run stopped cleanly on a signal or a Prefect cancellation; `version`: its latest checkpoint."""

    def __init__(self, reason: str, exit_code: int, version: int | None = None, run_name: str | None = None):
        super().__init__(reason)
        self.reason, self.exit_code, self.version, self.run_name = reason, exit_code, version, run_name


class _TrackedExecutor(ThreadPoolExecutor):
    """The loop's default executor (asyncio.to_thread) remembering what runs in it: a cancelled
    `await asyncio.to_thread(trainer.train_step, ...)` goes on in its thread, and nothing may save
    the trainer before it ends."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="dartflow-thread")
        self.running: set = set()

    def submit(self, fn, /, *args, **kwargs):
        future = super().submit(fn, *args, **kwargs)
        self.running.add(future)
        future.add_done_callback(self.running.discard)
        return future


class _Interrupts:
    """The state of one interruptible run: why it stops, its loop and main task, whether it is closing."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.exit_code = 0
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.executor = _TrackedExecutor()
        self.flow_run_id: Any = None
        self.watcher: asyncio.Task | None = None
        self.context: contextvars.Context | None = None  # the loop's, before the flow engine adds its own

    def request(self, reason: str, exit_code: int) -> None:
        """Stop the run cleanly (any thread); later requests change nothing."""
        if self.reason is not None:
            return
        self.reason, self.exit_code = reason, exit_code
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._cancel_flow)

    def _cancel_flow(self) -> None:
        # Once close_run runs, the run is ending anyway: cutting it short would leave it half closed.
        if self.task is not None and not self.task.done() and not self.closing and not self.task.cancelling():
            self.task.cancel()

    def on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            force_exit(128 + signum, f"{name} again")
        stage = "finishing the shutdown under way" if self.closing else (
            "stopping cleanly: the step in progress ends, engine and environment workers stop, "
            "the latest checkpoint is kept"
        )
        print(f"\ndartflow: {name}: {stage} ({name} again to stop at once)", file=sys.stderr, flush=True)
        self.request(name, 128 + signum)

    async def main(self, make_coroutine: Callable[[], Coroutine]) -> Any:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(self.executor)
        self.loop, self.task, self.context = loop, asyncio.current_task(), contextvars.copy_context()
        if self.reason is not None:  # signalled before the loop started
            raise asyncio.CancelledError
        try:
            return await make_coroutine()
        except BaseException:
            if self.reason == "cancelled in Prefect" and self.flow_run_id is not None:
                await _mark_cancelled(self.flow_run_id)
            raise
        finally:
            if self.watcher is not None:
                self.watcher.cancel()


_active: _Interrupts | None = None


def run_interruptibly(make_coroutine: Callable[[], Coroutine]) -> Any:
    """Run `make_coroutine()` on an event loop in a thread while the main thread takes SIGINT/SIGTERM.

    Returns its result; raises RunInterrupted after a clean stop, or what the coroutine raised.
    Outside the main thread (no signals there) it is a plain `asyncio.run`."""
    global _active
    if threading.current_thread() is not threading.main_thread() or _active is not None:
        return asyncio.run(make_coroutine())
    interrupts = _active = _Interrupts()
    outcome: dict[str, Any] = {}

    def run_loop() -> None:
        try:
            outcome["result"] = asyncio.run(interrupts.main(make_coroutine))
        except BaseException as error:  # handed to the main thread
            outcome["error"] = error

    previous = {  # a signal ignored by whoever started us (nohup, a background job) stays ignored
        sig: signal.signal(sig, interrupts.on_signal)
        for sig in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        thread = threading.Thread(target=run_loop, name="dartflow-flow")
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _active = None
    if "result" in outcome:  # it completed, even if a signal came while it was closing
        return outcome["result"]
    if interrupts.reason is not None:
        raise RunInterrupted(interrupts.reason, interrupts.exit_code) from outcome["error"]
    raise outcome["error"]


def requested() -> str | None:
    """Why the run is being stopped ("SIGINT", "SIGTERM", "cancelled in Prefect"), or None."""
    return _active.reason if _active is not None else None


def begin_closing() -> None:
    """The flow is closing the run: a first signal from now on no longer cancels it."""
    if _active is not None:
        _active.closing = True


async def wait_for_threads(timeout_s: float) -> bool:
    """Wait for the work in the loop's default executor (`asyncio.to_thread`) to end; True if it did."""
    if _active is None:
        return True
    running = [asyncio.wrap_future(future) for future in list(_active.executor.running) if not future.done()]
    if not running:
        return True
    done, pending = await asyncio.wait(running, timeout=timeout_s)
    for future in done:  # retrieved, so that asyncio does not log them as never retrieved
        future.cancelled() or future.exception()
    return not pending


def force_exit(exit_code: int, why: str) -> None:
    """Kill every child process (engine, environment workers, Prefect API) and exit, from any state."""
    print(
        f"\ndartflow: {why}: killing the run's processes now; --resume continues from the latest checkpoint",
        file=sys.stderr, flush=True,
    )
    kill_children()
    sys.stdout.flush()
    os._exit(exit_code)


def kill_children(timeout_s: float = 5.0) -> None:
    """SIGKILL every descendant but multiprocessing's resource tracker, which exits by itself once this
    process is gone, unlinking the shared memory the killed processes leave behind."""
    import psutil

    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "multiprocessing.resource_tracker" not in " ".join(child.cmdline()):
                children.append(child)
        except psutil.Error:
            continue
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(children, timeout=timeout_s)


# ---- Prefect ---------------------------------------------------------------------------------------


def watch_prefect_cancellation(flow, flow_run, state) -> None:
    """An `on_running` flow hook: a cancellation from the Prefect UI/API (the flow run turning
    Cancelling) stops the run like Ctrl-C. Nothing else acts on it for a flow run started in-process:
    Prefect's cancellation observers live in workers and runners, which kill the process they started."""
    if _active is None or _active.watcher is not None:
        return
    _active.flow_run_id = flow_run.id
    # In the loop's own context: a client of its own, not the flow engine's (closed when the flow ends).
    _active.watcher = asyncio.get_running_loop().create_task(
        _poll_cancellation(_active, flow_run.id), context=_active.context
    )


async def _poll_cancellation(interrupts: _Interrupts, flow_run_id) -> None:
    from prefect.client.orchestration import get_client

    try:
        while True:
            await asyncio.sleep(PREFECT_CANCEL_POLL_S)
            async with get_client() as client:
                flow_run = await client.read_flow_run(flow_run_id)
            state = flow_run.state
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                print("\ndartflow: the flow run was cancelled in Prefect: stopping cleanly", file=sys.stderr, flush=True)
                interrupts.request("cancelled in Prefect", 128 + signal.SIGINT)
                return
    except Exception as error:  # the API went away; signals still work
        print(f"dartflow: watching for a Prefect cancellation stopped: {error!r}", file=sys.stderr)


async def _mark_cancelled(flow_run_id) -> None:
    """After a Prefect cancellation the engine reports Crashed (any cancelled task looks like a crash to
    it); the run was cancelled on request, and says so."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    try:
        async with get_client() as client:
            cancelled = Cancelled(message="Cancelled: the run stopped cleanly")
            await client.set_flow_run_state(flow_run_id, cancelled, force=True)
    except Exception as error:
        print(f"dartflow: could not mark the flow run Cancelled in Prefect: {error!r}", file=sys.stderr)


def start_prefect_api() -> None:
    """Start Prefect's ephemeral API server now, in a process group of its own (Ctrl-C in the terminal
    does not stop it) that stops when this process does (PR_SET_PDEATHSIG, or Prefect's atexit hook).

    Does nothing with a configured PREFECT_API_URL, off Linux, or outside the main thread (the death
    signal follows the thread that started the server). Relies on how Prefect 3.6 spawns the server
    (`subprocess.Popen` in prefect.server.api.server, one shared `SubprocessASGIServer()`); should
    that change, the server starts as before, only stopping with a terminal's Ctrl-C."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return
    import ctypes

    from prefect.server.api import server as prefect_server

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child runs no more than it must
    detach = functools.partial(_own_group_tied_to, os.getpid(), prctl)
    shim = types.SimpleNamespace(Popen=functools.partial(subprocess.Popen, preexec_fn=detach))
    real = prefect_server.subprocess
    prefect_server.subprocess = shim
    try:
        prefect_server.SubprocessASGIServer().start()
    finally:
        prefect_server.subprocess = real


def _own_group_tied_to(parent_pid: int, prctl, /) -> None:
    """In the server's child process between fork and exec."""
    os.setpgid(0, 0)
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)
