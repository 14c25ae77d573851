"""What the cluster and its worker processes say to each other, and how it is framed on the socket.

One Unix socket pair per worker. Each message is a pickled dataclass behind an 8-byte length. The
worker side reads and writes with blocking calls (it has nothing else to do); the parent side feeds
whatever bytes asyncio hands it to a `FrameDecoder`, so the event loop never waits on a worker.
Stdlib only: a worker imports this before anything else, and its start-up time is the cluster's.
"""

from __future__ import annotations

import pickle
import socket
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from dartflow.tasks.envs.protocol import Problem

_LENGTH = struct.Struct("!Q")


# parent -> worker
@dataclass(frozen=True)
class ResetRequest:
    request_id: int
    slot: int
    environment: str  # registered name or "pkg.module:Class"
    params: dict[str, Any]
    environment_key: str  # instances are reused across episodes only when this key matches
    problem: Problem


@dataclass(frozen=True)
class StepRequest:
    request_id: int
    slot: int
    action_text: str


@dataclass(frozen=True)
class Shutdown:
    """Close every environment instance and exit."""


# worker -> parent
@dataclass(frozen=True)
class WorkerReady:
    pid: int


@dataclass(frozen=True)
class RequestDone:
    request_id: int
    busy_s: float  # time inside the environment's constructor/reset/step
    value: Any  # reset: the observation (str); step: a StepResult


@dataclass(frozen=True)
class RequestFailed:
    request_id: int
    busy_s: float
    error: str  # "ExceptionType: message" and the last traceback lines


@dataclass(frozen=True)
class WorkerDying:
    """Last words of a worker that is about to exit on its own (start-up failure, SystemExit in an env, ...)."""

    error: str


def encode_frame(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes in any chunking -> whole messages, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[object]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            messages.append(pickle.loads(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return messages


def send_message(sock: socket.socket, message: object) -> None:
    sock.sendall(encode_frame(message))


def receive_message(reader: BinaryIO) -> object | None:
    """The next message from a buffered reader over the socket (`sock.makefile("rb")`: one recv
    brings every request already queued), or None once the other end has closed the socket."""
    header = reader.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    payload = reader.read(length)
    return None if len(payload) < length else pickle.loads(payload)
