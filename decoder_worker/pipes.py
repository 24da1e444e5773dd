"""Worker ⇄ session process ⇄ decoding process: every message on the two pipes.

A worker forks one process per claimed session (:mod:`decoder_worker.slots`), and that
process forks one per decoder epoch (:mod:`decoder_worker.forking`); each pair talks over
a socket pair. Every message that crosses one is a frozen dataclass defined here;
nothing else builds or takes apart what goes over a pipe. The receiving functions
check that a message is one the receiver expects and raise :class:`PipeError`
otherwise, so a bug shows up as a message naming the pipe, not as a failed unpack
inside a fork. (Closed pipes are not errors of this kind: they raise ``EOFError``
on a blocking socket, ``asyncio.IncompleteReadError`` on the asyncio side.)

Worker -> session process (:data:`ToSession`)::

    [Grammar(fst)]                 phrase list: no dictation
    Start(first_segment, offset_samples, partial_interval)
    Audio(pcm) ... End() | Abort()

Session process -> worker (:data:`FromSession`)::

    Events((Partial | Final, ...), replay_sample, replay_segment) ...
                                   also with no events, every ``REPORT_EVERY_S`` of audio
    Ended(samples)                 after End or Abort; the process exits
    NoSpeech(samples)              silence_timeout reached; the process exits
    Crashed(message)               decoding failed; the process exits

``replay_sample`` and ``replay_segment`` are the recognizer's ``replay_point`` after
those events: where a replacement would have to restart, with which segment number, to
reproduce what comes next (:mod:`decoder_worker.replay`).

Session process -> decoding process (:data:`ToDecoder`), and the replies
(:data:`FromDecoder`)::

    Accept(pcm) ...                no reply: audio goes on without waiting
    Peek()                      -> BestPath(text)
    Finish()                    -> Finished(text, likelihood), Aligned(words, failed)
    ... (the next utterance)       until the session process closes the pipe

``Finished`` goes out before the words are aligned: if the native aligner takes the
process down, the utterance keeps its text and only loses its times.

Framing: a 4-byte big-endian length, then a pickle. Pickle is safe here because both
ends are forks of one program; a message costs a few dozen bytes more than the
tuple it replaced, against 8000 bytes of audio every quarter second.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from dataclasses import dataclass

from decoder_worker.engine import WordTime
from decoder_worker.recognizer import Event

__all__ = [
    "HEADER",
    "Abort",
    "Accept",
    "Aligned",
    "Audio",
    "BestPath",
    "Crashed",
    "End",
    "Ended",
    "Events",
    "FromDecoder",
    "FromSession",
    "Grammar",
    "Message",
    "NoSpeech",
    "Peek",
    "PipeError",
    "Start",
    "ToDecoder",
    "ToSession",
    "encode",
    "read_frame",
    "read_from_session",
    "recv_frame",
    "recv_from_decoder",
    "recv_to_decoder",
    "recv_to_session",
    "send",
    "send_frame",
]

HEADER = struct.Struct("!I")  # the length prefix of every frame


class PipeError(ValueError):
    """A message that is not one the receiving end of its pipe expects (a bug)."""


# --- worker -> session process ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grammar:
    """Recognise only this grammar (FST text, see :mod:`decoder_worker.grammar`)."""

    fst: str


@dataclass(frozen=True, slots=True)
class Start:
    """Start decoding at absolute sample ``offset_samples``; the next final is numbered
    ``first_segment``."""

    first_segment: int
    offset_samples: int
    partial_interval: float


@dataclass(frozen=True, slots=True)
class Audio:
    """The next piece of the session's audio (s16le mono, any length)."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The client ended the stream: finish the open segment, then report ``Ended``."""


@dataclass(frozen=True, slots=True)
class Abort:
    """The session ends without a last final: report ``Ended`` at once."""


ToSession = Grammar | Start | Audio | End | Abort


# --- session process -> worker ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Events:
    """Results of the audio received so far, and where a replay would restart now."""

    events: tuple[Event, ...]
    replay_sample: int
    replay_segment: int


@dataclass(frozen=True, slots=True)
class Ended:
    """The session is over; ``samples`` (absolute) were received."""

    samples: int


@dataclass(frozen=True, slots=True)
class NoSpeech:
    """``silence_timeout`` passed without speech after ``samples`` (absolute)."""

    samples: int


@dataclass(frozen=True, slots=True)
class Crashed:
    """Decoding raised; ``message`` names the exception."""

    message: str


FromSession = Events | Ended | NoSpeech | Crashed


# --- session process -> decoding process, and back ----------------------------------


@dataclass(frozen=True, slots=True)
class Accept:
    """Decode this audio of the utterance."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class Peek:
    """Answer with the best path so far (:class:`BestPath`)."""


@dataclass(frozen=True, slots=True)
class Finish:
    """Finalise the utterance, answer with :class:`Finished` and :class:`Aligned`."""


ToDecoder = Accept | Peek | Finish


@dataclass(frozen=True, slots=True)
class BestPath:
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    text: str
    likelihood: float


@dataclass(frozen=True, slots=True)
class Aligned:
    """The finished utterance's word times (``None``: none), and whether aligning failed."""

    words: tuple[WordTime, ...] | None
    failed: bool


FromDecoder = BestPath | Finished | Aligned

Message = ToSession | FromSession | ToDecoder | FromDecoder


# --- framing ------------------------------------------------------------------------


def encode(obj: object) -> bytes:
    """One frame: the length prefix and the pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def _decode(data: bytes) -> object:
    try:
        return pickle.loads(data)
    except pickle.UnpicklingError as exc:
        raise PipeError(f"a frame that is not a pickle: {exc}") from exc


def _unexpected(msg: object, pipe: str) -> PipeError:
    return PipeError(f"{type(msg).__name__} is not a message of the {pipe} pipe")


# --- blocking sockets (the forked processes) ----------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        part = sock.recv(size - len(buf))
        if not part:
            raise EOFError
        buf += part
    return bytes(buf)


def send_frame(sock: socket.socket, obj: object) -> None:
    """Send any picklable object as one frame (tests use it for their own children)."""
    sock.sendall(encode(obj))


def recv_frame(sock: socket.socket) -> object:
    """The next frame's object, unchecked; ``EOFError`` when the pipe closed."""
    (size,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    return _decode(_recv_exact(sock, size))


def send(sock: socket.socket, msg: Message) -> None:
    send_frame(sock, msg)


def recv_to_session(sock: socket.socket) -> ToSession:
    """In a session process: the worker's next message."""
    msg = recv_frame(sock)
    if isinstance(msg, ToSession):
        return msg
    raise _unexpected(msg, "worker -> session")


def recv_to_decoder(sock: socket.socket) -> ToDecoder:
    """In a decoding process: the session process's next message."""
    msg = recv_frame(sock)
    if isinstance(msg, ToDecoder):
        return msg
    raise _unexpected(msg, "session -> decoder")


def recv_from_decoder(sock: socket.socket) -> FromDecoder:
    """In a session process: the decoding process's reply."""
    msg = recv_frame(sock)
    if isinstance(msg, FromDecoder):
        return msg
    raise _unexpected(msg, "decoder -> session")


# --- asyncio streams (the worker's side of a session pipe) --------------------------


async def read_frame(reader: asyncio.StreamReader) -> object:
    """The next frame's object; ``asyncio.IncompleteReadError`` when the pipe closed."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return _decode(await reader.readexactly(size))


async def read_from_session(reader: asyncio.StreamReader) -> FromSession:
    """In the worker: the session process's next message."""
    msg = await read_frame(reader)
    if isinstance(msg, FromSession):
        return msg
    raise _unexpected(msg, "session -> worker")
