"""Fork-based isolation of decoding state.

kaldi-active-grammar's decoder carries process-wide state from one utterance to the
next: the same audio decoded twice in one process can come out differently, and even a
second engine loaded into a process that already decoded is affected (docs/engine.md).
From one starting state, decoding is exactly reproducible. So nothing here ever decodes
with a loaded engine directly: :class:`ForkingEngine` runs every utterance in a fresh
fork of it. A segment's text then depends on that segment's audio alone — a worker
that takes a session over and replays the open segment gets exactly the text the
first worker would have, and the cluster matches a direct decode of the same audio.

Forking a process that maps the model costs a few milliseconds (page tables only; the
model's pages stay shared copy-on-write), once per utterance.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import socket
import struct
from collections.abc import Callable, Sequence
from contextlib import nullcontext, suppress
from typing import Any

from decoder_worker.engine import Engine
from decoder_worker.gate import CpuGate

HEADER = struct.Struct("!I")  # the length prefix of every frame
_PR_SET_PDEATHSIG = 1


def recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        part = sock.recv(size - len(buf))
        if not part:
            raise EOFError
        buf += part
    return bytes(buf)


def send_frame(sock: socket.socket, obj: Any) -> None:
    """One length-prefixed pickle; only ever between this program's own processes."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(HEADER.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> Any:
    (size,) = HEADER.unpack(recv_exact(sock, HEADER.size))
    return pickle.loads(recv_exact(sock, size))


def become_child(keep: socket.socket, close: Sequence[int] = ()) -> None:
    """In a fresh fork: default signals, die with the parent, drop others' pipes."""
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


def fork_process(
    target: Callable[[socket.socket], None], close: Sequence[int] = ()
) -> tuple[int, socket.socket]:
    """Fork a child that runs ``target`` on its end of a socket pair, then exits.

    Returns the child's pid and the parent's end. The child exits with 1 if ``target``
    raised, 0 otherwise; it never returns into the parent's code.
    """
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            parent.close()
            become_child(child, close)
            target(child)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    child.close()
    return pid, parent


def _utterance_main(sock: socket.socket, engine: Engine, gate: CpuGate | None) -> None:
    held = gate.held if gate is not None else nullcontext
    while True:
        kind, *args = recv_frame(sock)
        if kind == "accept":
            with held():
                engine.accept(args[0])
        elif kind == "partial":  # a traceback: too short to queue for
            send_frame(sock, engine.partial())
        elif kind == "finish":
            with held():
                result = engine.finish()
            send_frame(sock, result)
            return
        else:
            raise ValueError(f"unknown engine command {kind!r}")


class ForkingEngine:
    """An :class:`~decoder_worker.engine.Engine` that decodes each utterance in a fork.

    ``template`` must be a loaded engine that is never used directly. Audio is sent to
    the utterance's process without waiting; ``partial`` and ``finish`` wait for it to
    catch up, exactly as a direct call would. With a ``gate``, the process decodes only
    while it holds one of the gate's tokens.
    """

    def __init__(self, template: Engine, gate: CpuGate | None = None) -> None:
        self.sample_rate = template.sample_rate
        self._template = template
        self._gate = gate
        self._sock: socket.socket | None = None
        self._pid = 0

    def _start(self) -> socket.socket:
        self._pid, self._sock = fork_process(
            lambda sock: _utterance_main(sock, self._template, self._gate)
        )
        return self._sock

    def accept(self, pcm: bytes) -> None:
        if not pcm:
            return
        send_frame(self._sock or self._start(), ("accept", pcm))

    def partial(self) -> str:
        if self._sock is None:
            return ""
        send_frame(self._sock, ("partial",))
        return str(self._reply())

    def finish(self) -> tuple[str, float]:
        if self._sock is None:
            return "", 0.0
        try:
            send_frame(self._sock, ("finish",))
            text, likelihood = self._reply()
            return str(text), float(likelihood)
        finally:
            self._reap(kill=False)  # it exits by itself after answering

    def _reply(self) -> Any:
        assert self._sock is not None
        try:
            return recv_frame(self._sock)
        except EOFError:
            self._reap(kill=True)
            raise RuntimeError("the utterance's decoder process died") from None

    def close(self) -> None:
        """Abandon the open utterance, if any: its process is killed and reaped."""
        self._reap(kill=True)

    def _reap(self, *, kill: bool) -> None:
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        if kill:
            with suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        with suppress(ChildProcessError):
            os.waitpid(self._pid, 0)
