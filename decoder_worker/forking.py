"""Fork-based isolation of decoding state: one decoding process per decoder epoch.

kaldi-active-grammar's decoder carries process-wide state from one utterance to the
next: the same audio decoded twice in one process can come out differently, and even a
second engine loaded into a process that already decoded is affected (docs/engine.md).
From one starting state, decoding is exactly reproducible. So nothing here ever decodes
with a loaded engine directly: :class:`ForkingEngine` decodes in a fork of it, one
process for a run of utterances — a decoder *epoch* — until :meth:`ForkingEngine.renew`
drops it. The recogniser renews it every ``epoch_s`` of audio
(:mod:`decoder_worker.recognizer`): what an epoch decodes depends on the epoch's audio
alone, so a worker that takes a session over and replays the epoch gets exactly the
text the first worker would have, and the cluster matches a direct decode of the same
audio. Within an epoch the decoder stays warm: the lookahead graph it expanded for one
utterance serves the next, which costs less CPU than a fresh fork per utterance did
(``docs/performance.md``).

Forking a process that maps the model costs a few milliseconds (page tables only; the
model's pages stay shared copy-on-write), once per epoch.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from contextlib import nullcontext, suppress
from typing import TypeVar, assert_never

from decoder_worker import pipes
from decoder_worker.engine import Aligning, Decoded, Engine
from decoder_worker.gate import CpuGate

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_Reply = TypeVar("_Reply", pipes.BestPath, pipes.Finished, pipes.Aligned)


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


def _decoder_main(sock: socket.socket, engine: Engine, gate: CpuGate | None) -> None:
    held = gate.held if gate is not None else nullcontext
    while True:
        try:
            msg = pipes.recv_to_decoder(sock)
        except EOFError:  # the epoch or the session is over
            return
        match msg:
            case pipes.Accept(pcm):
                with held():
                    engine.accept(pcm)
            case pipes.Peek():  # a traceback: too short to queue for
                pipes.send(sock, pipes.BestPath(engine.partial()))
            case pipes.Finish():
                with held():
                    if isinstance(engine, Aligning):
                        # The text first: an aligner that takes the process down
                        # then costs only the times (see ForkingEngine.finish).
                        decoded = engine.finalize()
                        pipes.send(sock, pipes.Finished(decoded.text, decoded.likelihood))
                        decoded = engine.align(decoded)
                    else:
                        decoded = engine.finish()
                        pipes.send(sock, pipes.Finished(decoded.text, decoded.likelihood))
                pipes.send(sock, pipes.Aligned(decoded.words, decoded.align_failed))
            case unknown:
                assert_never(unknown)


class ForkingEngine:
    """An :class:`~decoder_worker.engine.Engine` that decodes in a fork of ``template``.

    ``template`` must be a loaded engine that is never used directly. The first audio
    forks a decoding process, which decodes every utterance until :meth:`renew` or
    :meth:`close`. Audio is sent to it without waiting; ``partial`` and ``finish`` wait
    for it to catch up, exactly as a direct call would. With a ``gate``, the process
    decodes only while it holds one of the gate's tokens.
    """

    def __init__(self, template: Engine, gate: CpuGate | None = None) -> None:
        self.sample_rate = template.sample_rate
        self._template = template
        self._gate = gate
        self._sock: socket.socket | None = None
        self._pid = 0

    def _start(self) -> socket.socket:
        self._pid, self._sock = fork_process(
            lambda sock: _decoder_main(sock, self._template, self._gate)
        )
        return self._sock

    def accept(self, pcm: bytes) -> None:
        if not pcm:
            return
        pipes.send(self._sock or self._start(), pipes.Accept(pcm))

    def partial(self) -> str:
        if self._sock is None:
            return ""
        pipes.send(self._sock, pipes.Peek())
        return self._reply(pipes.BestPath).text

    def finish(self) -> Decoded:
        if self._sock is None:
            return Decoded("", 0.0)
        pipes.send(self._sock, pipes.Finish())
        reply = self._reply(pipes.Finished)
        try:
            aligned = self._reply(pipes.Aligned)
        except RuntimeError:  # it died aligning: the text stands, without times
            log.warning("word alignment took the decoding process down: no times")
            return Decoded(reply.text, reply.likelihood, align_failed=True)
        return Decoded(reply.text, reply.likelihood, aligned.words, aligned.failed)

    def renew(self) -> None:
        """End the decoding process: the next audio forks a fresh one."""
        self._reap(kill=True)

    def _reply(self, expected: type[_Reply]) -> _Reply:
        assert self._sock is not None
        try:
            reply = pipes.recv_from_decoder(self._sock)
        except EOFError:
            self._reap(kill=True)
            raise RuntimeError("the decoding process died") from None
        if not isinstance(reply, expected):
            self._reap(kill=True)
            raise pipes.PipeError(f"{type(reply).__name__} where {expected.__name__} was due")
        return reply

    def close(self) -> None:
        """Abandon the decoding process, if any (an open utterance with it): it is
        killed and reaped."""
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
