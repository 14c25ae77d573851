"""One environment worker process: hosts environment instances in slots and runs their resets/steps.

The parent (`cluster.py`) sends requests over a socket; this process runs them one at a time, in the
order they arrived, and answers each with the time it spent inside the environment. Slot `i` holds
the instance of whichever episode the parent routed to slot `i`; an instance is kept across episodes
and reused when the next episode in its slot is of the same environment and params.

A worker never outlives its parent: it exits when the socket reaches EOF, when its parent pid
changes (a watcher thread, for a parent killed while a step runs), and on Linux, when it was spawned
from the main thread, through PR_SET_PDEATHSIG (which also catches a step that holds the GIL).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable

from dartflow.tasks.envs.cluster_wire import (
    RequestDone,
    RequestFailed,
    ResetRequest,
    Shutdown,
    StepRequest,
    WorkerDying,
    WorkerReady,
    encode_frame,
    receive_message,
    send_message,
)
from dartflow.tasks.envs.protocol import Environment, StepResult

EnvironmentFactory = Callable[[str, dict[str, Any]], Environment]

_PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


def run_worker(
    sock: socket.socket,
    environment_factory: EnvironmentFactory | None,
    parent_pid: int,
    kill_with_parent_thread: bool,
) -> None:
    """Entry point of a spawned worker process."""
    # Ctrl-C goes to the whole process group; the parent decides when and how its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_when_parent_dies(parent_pid, kill_with_parent_thread)
    try:
        factory = environment_factory or _registry_factory()
    except BaseException as exc:
        _send_last_words(sock, f"the environment factory could not be loaded: {describe_exception(exc)}")
        sys.exit(1)
    send_message(sock, WorkerReady(pid=os.getpid()))
    slots = EnvironmentSlots(factory)
    requests = sock.makefile("rb")
    try:
        while True:
            request = receive_message(requests)
            if request is None or isinstance(request, Shutdown):
                break
            sock.sendall(_encode_reply(slots.handle(request)))
    except BaseException as exc:  # SystemExit from an env, a broken socket, ...: this worker is done
        _send_last_words(sock, describe_exception(exc))
        raise
    finally:
        slots.close_all()


class EnvironmentSlots:
    """The environment instances of one worker, by slot; runs requests against them."""

    def __init__(self, factory: EnvironmentFactory) -> None:
        self._factory = factory
        self._instances: dict[int, tuple[str, Environment]] = {}  # slot -> (environment key, instance)

    def handle(self, request: ResetRequest | StepRequest) -> RequestDone | RequestFailed:
        started = time.perf_counter()
        try:
            if isinstance(request, ResetRequest):
                value: Any = self._reset(request)
            elif isinstance(request, StepRequest):
                value = self._step(request)
            else:
                raise TypeError(f"unknown request {type(request).__name__}")
        except Exception as exc:
            # The instance may have stopped anywhere inside its step: the next episode gets a fresh one.
            self._discard(getattr(request, "slot", -1))
            return RequestFailed(request.request_id, time.perf_counter() - started, describe_exception(exc))
        return RequestDone(request.request_id, time.perf_counter() - started, value)

    def _reset(self, request: ResetRequest) -> str:
        held = self._instances.get(request.slot)
        if held is None or held[0] != request.environment_key:
            self._discard(request.slot)
            instance = self._factory(request.environment, dict(request.params))
            self._instances[request.slot] = (request.environment_key, instance)
        else:
            instance = held[1]
        observation = instance.reset(request.problem)
        if not isinstance(observation, str):
            raise TypeError(f"{request.environment}.reset returned {type(observation).__name__}, not str")
        return observation

    def _step(self, request: StepRequest) -> StepResult:
        held = self._instances.get(request.slot)
        if held is None:
            raise RuntimeError(f"slot {request.slot} holds no environment instance (its reset failed or never ran)")
        return checked_step_result(held[1].step(request.action_text))

    def _discard(self, slot: int) -> None:
        held = self._instances.pop(slot, None)
        if held is not None:
            _close_quietly(held[1])

    def close_all(self) -> None:
        for slot in list(self._instances):
            self._discard(slot)


def checked_step_result(result: Any) -> StepResult:
    """A StepResult with plain types, or TypeError naming what is wrong (numpy floats become floats)."""
    if not isinstance(result, tuple) or len(result) != 4:
        raise TypeError(f"step must return StepResult(observation, reward, done, info), got {type(result).__name__}")
    observation, reward, done, info = result
    if not isinstance(observation, str):
        raise TypeError(f"step returned an observation of type {type(observation).__name__}, not str")
    if not isinstance(info, dict):
        raise TypeError(f"step returned info of type {type(info).__name__}, not dict")
    return StepResult(observation, float(reward), bool(done), info)


def describe_exception(exc: BaseException, max_frames: int = 3) -> str:
    """'Type: message' and where it was raised (the innermost frames outside this module)."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename != __file__]
    where = "".join(traceback.format_list(frames[-max_frames:]))
    return f"{type(exc).__name__}: {exc}" + (f"\n{where.rstrip()}" if where else "")


def _encode_reply(reply: RequestDone | RequestFailed) -> bytes:
    try:
        return encode_frame(reply)
    except Exception as exc:  # e.g. an info dict holding something unpicklable
        error = f"the result could not be sent: {describe_exception(exc)}"
        return encode_frame(RequestFailed(reply.request_id, reply.busy_s, error))


def _registry_factory() -> EnvironmentFactory:
    from dartflow.tasks.envs.registry import make_environment

    return make_environment


def _close_quietly(instance: Environment) -> None:
    try:
        instance.close()
    except Exception as exc:
        print(f"dartflow env worker {os.getpid()}: closing {type(instance).__name__} failed: {exc!r}", file=sys.stderr)


def _send_last_words(sock: socket.socket, error: str) -> None:
    try:
        send_message(sock, WorkerDying(error))
    except OSError:
        pass  # the parent is gone or closed the socket: nobody to tell


def _exit_when_parent_dies(parent_pid: int, kill_with_parent_thread: bool) -> None:
    # PDEATHSIG fires when the *thread* that spawned us exits, so it is only safe when that thread was
    # the parent's main thread; the pid watcher below covers every other case.
    if kill_with_parent_thread and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
