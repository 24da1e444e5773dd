"""Session processes: each claimed session runs in its own fork of the worker.

The worker loads the engine once and never decodes with it. A session's process runs
the recognizer (endpointing, segment numbering, decoder epochs) and hands the audio to a
further fork of the pristine engine, one per decoder epoch
(:class:`~decoder_worker.forking.ForkingEngine`), so the model's pages stay shared
copy-on-write, the Kaldi call never blocks the worker's event loop, and every epoch
decodes from the same state. When the session ends its process exits, and whatever its
decoders cached goes with it.

The messages on the pipe between the worker and a session process, and those between
that process and its decoding process, are defined in :mod:`decoder_worker.pipes`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from contextlib import suppress
from typing import assert_never

from decoder_worker import pipes
from decoder_worker.engine import Engine
from decoder_worker.forking import ForkingEngine, fork_process
from decoder_worker.gate import CpuGate
from decoder_worker.grammar import GrammarError, Restrictable
from decoder_worker.model import EndpointRules
from decoder_worker.recognizer import Recognizer

log = logging.getLogger(__name__)
#: Seconds of audio after which a session process reports its replay point anyway.
REPORT_EVERY_S = 5.0
#: How long a decoder process may take to exit after its pipe closed.
_EXIT_GRACE_S = 2.0


class SlotDied(Exception):
    """A session's decoder process exited or broke its pipe."""


# --- the child side: blocking I/O on a plain socket --------------------------------


def _serve_one_session(
    sock: socket.socket,
    engine: Engine,
    rules: EndpointRules,
    silence_timeout: float = 0.0,
    gate: CpuGate | None = None,
) -> None:
    msg = pipes.recv_to_session(sock)
    if isinstance(msg, pipes.Grammar):
        if not isinstance(engine, Restrictable):
            raise GrammarError("Bad grammar: this engine does not support phrase lists")
        engine.restrict(msg.fst)  # this process's copy; every utterance forks from it
        msg = pipes.recv_to_session(sock)
    if not isinstance(msg, pipes.Start):
        raise pipes.PipeError(f"a session must begin with Start, not {type(msg).__name__}")
    utterances = ForkingEngine(engine, gate)
    recognizer = Recognizer(
        utterances,
        rules,
        partial_interval=msg.partial_interval,
        first_segment=msg.first_segment,
        offset_samples=msg.offset_samples,
    )
    # Without results (a long silence) the replay point still moves on, so that the
    # worker can trim the audio stream: report it every REPORT_EVERY_S of audio.
    report_every = int(REPORT_EVERY_S * engine.sample_rate)
    reported = recognizer.samples_received
    # Measured on the audio received, not on decoder output: a slow speaker's long
    # pause inside an utterance keeps the segment open and does not count.
    no_speech_limit = int(silence_timeout * engine.sample_rate)
    try:
        while True:
            match pipes.recv_to_session(sock):
                case pipes.Audio(pcm):
                    events = recognizer.feed(pcm)
                    if events or recognizer.samples_received - reported >= report_every:
                        report = pipes.Events(tuple(events), *recognizer.replay_point)
                        pipes.send(sock, report)
                        reported = recognizer.samples_received
                    if no_speech_limit and recognizer.samples_without_speech >= no_speech_limit:
                        pipes.send(sock, pipes.NoSpeech(recognizer.samples_received))
                        return
                case pipes.End():
                    events = recognizer.end()
                    if events:
                        report = pipes.Events(tuple(events), *recognizer.replay_point)
                        pipes.send(sock, report)
                    pipes.send(sock, pipes.Ended(recognizer.samples_received))
                    return
                case pipes.Abort():
                    pipes.send(sock, pipes.Ended(recognizer.samples_received))
                    return
                case pipes.Grammar() | pipes.Start() as late:
                    raise pipes.PipeError(f"{type(late).__name__} in the middle of a session")
                case unknown:
                    assert_never(unknown)
    finally:
        utterances.close()


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

    async def send(self, msg: pipes.ToSession) -> None:
        try:
            self._writer.write(pipes.encode(msg))
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise SlotDied(f"decoder process {self.pid}") from exc

    async def recv(self) -> pipes.FromSession:
        """The process's next message; :class:`~decoder_worker.pipes.PipeError` if it
        sent something else."""
        try:
            return await pipes.read_from_session(self._reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise SlotDied(f"decoder process {self.pid}") from exc

    async def close(self) -> float:
        """Close the pipe and reap the process; returns the CPU seconds it used.

        A process that ended its session exits by itself on EOF; one that does not
        within a moment (hung, or cut off mid-session) is killed.
        """
        self._writer.close()
        try:
            # Closing flushes what is still buffered; a child that stopped reading
            # (hung, or busy failing its session) would never let that finish.
            async with asyncio.timeout(_EXIT_GRACE_S):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()
        except (ConnectionError, OSError):
            pass
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

    def __init__(
        self,
        engine: Engine,
        rules: EndpointRules,
        size: int,
        *,
        silence_timeout: float = 0.0,
        gate: CpuGate | None = None,
    ) -> None:
        self._engine = engine
        self._rules = rules
        #: how many of the sessions' decoding processes decode at one moment
        self.gate = gate
        #: seconds of audio without speech after which a session ends (0: never)
        self.silence_timeout = silence_timeout
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
        siblings = [slot.fileno for slot in self._live.values()]
        pid, parent_sock = fork_process(self._session_main, close=siblings)
        reader, writer = await asyncio.open_connection(sock=parent_sock)
        slot = Slot(pid, reader, writer)
        self._live[pid] = slot
        return slot

    def _session_main(self, sock: socket.socket) -> None:
        """The session process: decode one session, report a failure to the worker."""
        try:
            _serve_one_session(sock, self._engine, self._rules, self.silence_timeout, self.gate)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pass  # the worker went away or dropped the session
        except Exception as exc:
            log.exception("decoder process failed")
            with suppress(OSError):
                pipes.send(sock, pipes.Crashed(f"{type(exc).__name__}: {exc}"))
            raise

    async def reap(self, slot: Slot) -> float:
        """End a session process and return its CPU seconds; the slot stays reserved."""
        self._live.pop(slot.pid, None)
        return await slot.close()

    async def retire(self, slot: Slot) -> float:
        """The session is over: reap its process, free the slot, return its CPU seconds."""
        try:
            return await self.reap(slot)
        finally:
            self.unreserve()

    async def close(self) -> None:
        for slot in list(self._live.values()):
            await slot.close()
        self._live.clear()
