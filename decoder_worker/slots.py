"""Decoder processes: a fresh fork of the loaded engine for every session.

The worker loads the engine once and never decodes with it. Each claimed session gets
its own child process, forked from that pristine copy: the model's pages stay shared
copy-on-write, so a session costs only its decoding state; the Kaldi call never blocks
the worker's event loop; and every session starts from the same decoder state. That
last point matters: kaldi-active-grammar's decoder carries state from one utterance to
the next (the same audio decoded twice in one process can come out differently), so a
long-lived decoder would make results depend on which sessions a process served before.
When the session ends the child exits, and whatever its decoder cached goes with it.

Parent -> child:  ("start", first_segment, offset_samples, partial_interval)
                  ("audio", pcm) ... ("end",) | ("abort",)
Child -> parent:  ("events", [Partial | Final, ...]) ... ("ended", samples)
                  ("error", message)   decoding failed; the child exits
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import pickle
import signal
import socket
import struct
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

from decoder_worker.engine import Engine
from decoder_worker.model import EndpointRules
from decoder_worker.recognizer import Recognizer

log = logging.getLogger(__name__)
T = TypeVar("T")
_HEADER = struct.Struct("!I")
_PR_SET_PDEATHSIG = 1
#: How long a decoder process may take to exit after its pipe closed.
_EXIT_GRACE_S = 2.0


class SlotDied(Exception):
    """A session's decoder process exited or broke its pipe."""


# --- the child side: blocking I/O on a plain socket --------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        part = sock.recv(size - len(buf))
        if not part:
            raise EOFError
        buf += part
    return bytes(buf)


def _send(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv(sock: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return pickle.loads(_recv_exact(sock, size))


def _serve_one_session(sock: socket.socket, engine: Engine, rules: EndpointRules) -> None:
    kind, first_segment, offset, interval = _recv(sock)
    if kind != "start":
        raise ValueError(f"expected start, got {kind!r}")
    recognizer = Recognizer(
        engine, rules, partial_interval=interval, first_segment=first_segment, offset_samples=offset
    )
    while True:
        msg = _recv(sock)
        if msg[0] == "audio":
            events = recognizer.feed(msg[1])
            if events:
                _send(sock, ("events", events))
        elif msg[0] in ("end", "abort"):
            events = recognizer.end()
            if msg[0] == "end" and events:
                _send(sock, ("events", events))
            _send(sock, ("ended", recognizer.samples_received))
            return
        else:
            raise ValueError(f"unknown decoder command {msg[0]!r}")


def _become_child(keep: socket.socket, close: list[int]) -> None:
    """Leave the parent's event loop, signals and sockets alone; die with the parent."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    for fd in close:  # siblings' pipes must see EOF when their own process goes
        if fd != keep.fileno():
            with suppress(OSError):
                os.close(fd)


def fork_call(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a fresh fork and return its result (tests, benchmarks).

    Gives a direct decode the same starting state a cluster session gets.
    """
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            parent.close()
            _send(child, fn(*args))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    child.close()
    try:
        result: T = _recv(parent)
    except EOFError:
        raise RuntimeError(f"{fn.__name__} failed in the forked process") from None
    finally:
        parent.close()
        os.waitpid(pid, 0)
    return result


# --- the parent side ---------------------------------------------------------------


class Slot:
    """The worker's handle on one session's decoder process."""

    def __init__(
        self, pid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.pid = pid
        self._reader = reader
        self._writer = writer

    @property
    def fileno(self) -> int:
        return int(self._writer.get_extra_info("socket").fileno())

    async def send(self, *msg: Any) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._writer.write(_HEADER.pack(len(data)) + data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise SlotDied(f"decoder process {self.pid}") from exc

    async def recv(self) -> Any:
        try:
            (size,) = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
            return pickle.loads(await self._reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise SlotDied(f"decoder process {self.pid}") from exc

    async def close(self) -> float:
        """Close the pipe and reap the process; returns the CPU seconds it used.

        A process that ended its session exits by itself on EOF; one that does not
        within a moment (hung, or cut off mid-session) is killed.
        """
        self._writer.close()
        with suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        try:
            async with asyncio.timeout(_EXIT_GRACE_S):
                while True:
                    pid, _, usage = os.wait4(self.pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG)
                    if pid:
                        return float(usage.ru_utime + usage.ru_stime)
                    await asyncio.sleep(0.01)
        except TimeoutError:
            pass
        except ChildProcessError:
            return 0.0
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        _, _, usage = await asyncio.to_thread(os.wait4, self.pid, 0)
        return float(usage.ru_utime + usage.ru_stime)


class DecoderPool:
    """At most ``size`` decoder processes at once, each forked for one session."""

    def __init__(self, engine: Engine, rules: EndpointRules, size: int) -> None:
        self._engine = engine
        self._rules = rules
        self.size = size
        self._free = asyncio.Semaphore(size)
        self._live: dict[int, Slot] = {}

    async def reserve(self) -> None:
        """Wait for a free slot and hold it (the claim loop does this before reading)."""
        await self._free.acquire()

    def unreserve(self) -> None:
        self._free.release()

    async def spawn(self) -> Slot:
        """Fork a decoder process for a session, on a slot already reserved."""
        parent_sock, child_sock = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                parent_sock.close()
                _become_child(child_sock, [slot.fileno for slot in self._live.values()])
                _serve_one_session(child_sock, self._engine, self._rules)
            except EOFError:
                pass  # the worker went away or dropped the session
            except BaseException as exc:
                log.exception("decoder process failed")
                with suppress(OSError):
                    _send(child_sock, ("error", f"{type(exc).__name__}: {exc}"))
                code = 1
            finally:
                os._exit(code)
        child_sock.close()
        reader, writer = await asyncio.open_connection(sock=parent_sock)
        slot = Slot(pid, reader, writer)
        self._live[pid] = slot
        return slot

    async def retire(self, slot: Slot) -> float:
        """The session is over: reap its process, free the slot, return its CPU seconds."""
        self._live.pop(slot.pid, None)
        try:
            return await slot.close()
        finally:
            self.unreserve()

    async def close(self) -> None:
        for slot in list(self._live.values()):
            await slot.close()
        self._live.clear()
