"""The pipes between the worker, a session process and its decoding process: typed
messages round trip, a message of the wrong kind is refused with ``PipeError``, and
real forks (with a fake engine, no Kaldi) speak the protocol end to end."""

from __future__ import annotations

import asyncio
import os
import socket
import wave
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest

from decoder_worker import pipes
from decoder_worker.engine import Decoded
from decoder_worker.forking import ForkingEngine, _decoder_main, fork_process
from decoder_worker.model import EndpointRules
from decoder_worker.recognizer import Final, Partial
from decoder_worker.slots import DecoderPool, Slot, SlotDied
from harness.env import UNIT

RATE = 16000

TO_SESSION: list[pipes.ToSession] = [
    pipes.Grammar("0 1 불 불\n1\n"),
    pipes.Start(first_segment=3, offset_samples=48000, partial_interval=0.25),
    pipes.Audio(b"\x01\x00" * 4000),
    pipes.End(),
    pipes.Abort(),
]
FROM_SESSION: list[pipes.FromSession] = [
    pipes.Events((Partial(3, "불"), Final(3, "불 켜", -1.5, 3.0, 0.8, 4.0)), 64000, 2),
    pipes.Events((), 80000, 4),
    pipes.Ended(96000),
    pipes.NoSpeech(96000),
    pipes.Crashed("RuntimeError: boom"),
]
TO_UTTERANCE: list[pipes.ToDecoder] = [pipes.Accept(b"\x00\x01"), pipes.Peek(), pipes.Finish()]
FROM_UTTERANCE: list[pipes.FromDecoder] = [pipes.BestPath("불"), pipes.Finished("불 켜", -2.5)]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(10 * UNIT)
    b.settimeout(10 * UNIT)
    yield a, b
    a.close()
    b.close()


def test_messages_round_trip_over_a_socketpair(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    for msg in TO_SESSION:
        pipes.send(a, msg)
        assert pipes.recv_to_session(b) == msg
    for tu in TO_UTTERANCE:
        pipes.send(a, tu)
        assert pipes.recv_to_decoder(b) == tu
    for fu in FROM_UTTERANCE:
        pipes.send(b, fu)
        assert pipes.recv_from_decoder(a) == fu


def test_a_message_of_another_pipe_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    pipes.send(a, pipes.Audio(b"\x00\x00"))  # worker -> session, read as session -> decoder
    with pytest.raises(pipes.PipeError, match="Audio is not a message of the session -> decoder"):
        pipes.recv_to_decoder(b)
    pipes.send(a, pipes.Ended(1))
    with pytest.raises(pipes.PipeError, match="Ended"):
        pipes.recv_to_session(b)
    pipes.send(a, pipes.Peek())
    with pytest.raises(pipes.PipeError):
        pipes.recv_from_decoder(b)
    pipes.send_frame(a, ("audio", b"\x00\x00"))  # the tuples these messages replaced
    with pytest.raises(pipes.PipeError, match="tuple"):
        pipes.recv_to_session(b)
    a.sendall(pipes.HEADER.pack(3) + b"\x00\x01\x02")  # not a pickle at all
    with pytest.raises(pipes.PipeError, match="not a pickle"):
        pipes.recv_frame(b)
    pipes.send(a, pipes.End())  # and the pipe is still in step after all that
    assert pipes.recv_to_session(b) == pipes.End()


def test_a_closed_pipe_is_eof_not_a_pipe_error(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(pipes.encode(pipes.Audio(b"\x00" * 100))[:20])  # cut off mid-frame
    a.close()
    with pytest.raises(EOFError):
        pipes.recv_to_session(b)


async def _stream_pair() -> tuple[socket.socket, asyncio.StreamReader, asyncio.StreamWriter]:
    """A blocking end (the child's) and an asyncio end (the worker's) of a socket pair."""
    child, parent = socket.socketpair()
    child.settimeout(10 * UNIT)
    reader, writer = await asyncio.open_connection(sock=parent)
    return child, reader, writer


async def test_the_asyncio_side_reads_and_checks_reports() -> None:
    child, reader, writer = await _stream_pair()
    try:
        for msg in FROM_SESSION:
            pipes.send(child, msg)
            async with asyncio.timeout(10 * UNIT):
                assert await pipes.read_from_session(reader) == msg
        pipes.send(child, pipes.Audio(b""))  # a command where a report is due
        with pytest.raises(pipes.PipeError, match="session -> worker"):
            await pipes.read_from_session(reader)
        child.close()
        with pytest.raises(asyncio.IncompleteReadError):
            await pipes.read_from_session(reader)
    finally:
        child.close()
        writer.close()
        await writer.wait_closed()


async def test_a_slot_sends_commands_and_tells_death_from_a_bad_message() -> None:
    child, reader, writer = await _stream_pair()
    slot = Slot(os.getpid(), reader, writer)  # the pid only names it here; never closed
    try:
        for msg in TO_SESSION:
            await slot.send(msg)
            assert await asyncio.to_thread(pipes.recv_to_session, child) == msg
        pipes.send(child, pipes.Ended(5))
        assert await slot.recv() == pipes.Ended(5)
        pipes.send(child, pipes.Finish())
        with pytest.raises(pipes.PipeError):
            await slot.recv()
        child.close()
        with pytest.raises(SlotDied):
            await slot.recv()
    finally:
        child.close()
        writer.close()
        with suppress(ConnectionError, OSError):
            await writer.wait_closed()


# --- real forks, fake engine ----------------------------------------------------------


class FakeEngine:
    """Each utterance's partial counts the samples it accepted; its final is ``"x"``."""

    sample_rate = RATE

    def __init__(self) -> None:
        self.accepted = 0

    def accept(self, pcm: bytes) -> None:
        self.accepted += len(pcm) // 2

    def partial(self) -> str:
        return f"p{self.accepted}"

    def finish(self) -> Decoded:
        return Decoded("x", -float(self.accepted))


def test_forking_engine_talks_to_its_decoding_process() -> None:
    template = FakeEngine()
    engine = ForkingEngine(template)
    assert engine.partial() == "" and engine.finish() == Decoded("", 0.0)  # nothing forked
    engine.accept(b"\x00\x00" * 300)
    engine.accept(b"\x00\x00" * 100)
    assert engine.partial() == "p400"
    assert engine.finish() == Decoded("x", -400.0)
    engine.accept(b"\x00\x00" * 7)  # the next utterance: same process, same epoch
    assert engine.partial() == "p407"
    engine.renew()
    engine.accept(b"\x00\x00" * 7)  # a new epoch starts from the pristine template
    assert engine.partial() == "p7"
    engine.close()
    assert template.accepted == 0


def test_a_decoding_process_exits_on_a_foreign_message() -> None:
    pid, sock = fork_process(lambda s: _decoder_main(s, FakeEngine(), None))
    try:
        pipes.send(sock, pipes.Start(0, 0, 0.25))
        sock.settimeout(10 * UNIT)
        with pytest.raises(EOFError):
            pipes.recv_frame(sock)
    finally:
        sock.close()
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1


def _noise(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 30, int(seconds * RATE)).astype(np.int16).tobytes()


def _read_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        return bytes(w.readframes(w.getnframes()))


async def _session(commands: list[pipes.ToSession]) -> list[pipes.FromSession]:
    """Run one session process on a fake engine: send ``commands``, collect its reports
    up to the one it exits after."""
    pool = DecoderPool(FakeEngine(), EndpointRules(), 1)
    await pool.reserve()
    slot = await pool.spawn()
    reports: list[pipes.FromSession] = []

    async def collect() -> None:
        while True:
            reports.append(await slot.recv())
            if not isinstance(reports[-1], pipes.Events):
                return

    try:
        async with asyncio.timeout(30 * UNIT):
            collector = asyncio.create_task(collect())
            for command in commands:
                await slot.send(command)
            await collector
    finally:
        await pool.retire(slot)
        await pool.close()
    return reports


async def test_a_session_process_speaks_the_pipe(espeak_clip: Path) -> None:
    pcm = _noise(0.5, 1) + _read_pcm(espeak_clip) + _noise(2.0, 2)
    offset = 10 * RATE
    chunks = [pipes.Audio(pcm[i : i + 4000]) for i in range(0, len(pcm), 4000)]
    reports = await _session([pipes.Start(5, offset, 0.25), *chunks, pipes.End()])
    assert reports[-1] == pipes.Ended(offset + len(pcm) // 2)
    events = [e for r in reports if isinstance(r, pipes.Events) for e in r.events]
    finals = [e for e in events if isinstance(e, Final)]
    partials = [e for e in events if isinstance(e, Partial)]
    assert [(f.segment, f.text) for f in finals] == [(5, "x")]
    assert finals[0].start >= offset / RATE
    assert partials and all(p.segment == 5 and p.text.startswith("p") for p in partials)
    samples = [r.replay_sample for r in reports if isinstance(r, pipes.Events)]
    assert all(offset <= s <= offset + len(pcm) // 2 for s in samples)


async def test_a_session_process_reports_what_went_wrong() -> None:
    reports = await _session([pipes.Audio(b"\x00\x00" * 800)])  # no Start first
    assert len(reports) == 1 and isinstance(reports[0], pipes.Crashed)
    assert reports[0].message.startswith("PipeError: a session must begin with Start")
    reports = await _session([pipes.Grammar("0 1 불 불\n1\n")])  # the fake cannot restrict
    assert len(reports) == 1 and isinstance(reports[0], pipes.Crashed)
    assert "does not support phrase lists" in reports[0].message
    start = pipes.Start(0, 0, 0.25)
    reports = await _session([start, pipes.Audio(b"\x00\x00" * 800), start])
    assert len(reports) == 1 and isinstance(reports[0], pipes.Crashed)
    assert reports[0].message == "PipeError: Start in the middle of a session"
    reports = await _session([start, pipes.Audio(_noise(1.0, 3)), pipes.Abort()])
    assert reports == [pipes.Ended(RATE)]
