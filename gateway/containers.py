"""Container audio (OGG, WebM, MP3, FLAC, coded WAV…) decoded as its bytes arrive.

FFmpeg's demuxers pull their input through a read callback, and PyAV calls a Python
file-like object's ``read`` from inside them. A :class:`ContainerDecoder` therefore
runs PyAV on a thread of its own that reads from a :class:`_Pipe`: the event loop
feeds bytes into the pipe, and ``read`` blocks the decoder thread when the pipe is
empty. That is the moment all fed bytes have been demuxed, decoded and resampled,
so the thread tells the loop, and :meth:`ContainerDecoder.read` answers ``b""``.

The PCM that comes out is bounded, however far the input expands (a few KiB of FLAC
can hold an hour of silence): the thread stops decoding while :data:`PIECE_BYTES` of
it wait for the loop, and :meth:`ContainerDecoder.read` hands it over a piece at a
time, so the session writes each piece (and waits for room in its backlog) before
more is decoded. A frame that would resample to more than a piece is cut first, and
a stream whose sample rate is outside what raw PCM may have is refused.

The thread is parked on a condition variable between pieces (no CPU) and ends with
the stream: at end of input, on a decoding error, or when closed (``read`` then
reports end of file and FFmpeg unwinds).

Cost per session: one thread, FFmpeg's demuxer, decoder and resampler state, a
16 KiB read buffer and at most about a piece of PCM; WAV and raw PCM never come here
(see :mod:`gateway.audio`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import av
import av.error

from shared.protocol import UnsupportedAudio

log = logging.getLogger(__name__)

_READ_BUFFER = 16 * 1024
#: How much FFmpeg reads before the first packet to learn the stream's parameters.
#: Our formats state them in their headers; the defaults (5 MB, 5 s) would hold back
#: the first MP3 audio by about 1.5 s. OGG pages and FLAC's parser keep their own
#: minimum (one page; several frames), about a second with common encoders.
_PROBE = {"probesize": "4096", "analyzeduration": "100000"}
#: A decoder thread must notice a close within this long (it is parked in ``read``).
_CLOSE_WAIT_S = 5.0
#: Packets in a row that may fail to decode once audio has come out (a damaged page
#: in a long upload); before the first decoded frame, one failure ends the session.
_MAX_BAD_PACKETS = 20
#: PCM (s16le at the model's rate) the decoder thread makes before it waits for the
#: session to take it: about 2 s at 16 kHz.
PIECE_BYTES = 64 * 1024
#: Sample rates a decoded stream may have: those raw PCM and WAV may have.
MIN_RATE, MAX_RATE = 1000, 384000


class _Closed(Exception):
    """Raised in the decoder thread to unwind it once the session closed the decoder."""


class _Pipe:
    """A blocking byte pipe: the loop writes, the decoder thread reads."""

    def __init__(self, on_starved: Any) -> None:
        self.cond = threading.Condition()
        self.chunks: deque[memoryview] = deque()
        self.ended = False
        self.closed = False
        #: the thread waits in :meth:`read` for bytes (set and read with the lock held)
        self.starved = False
        self._on_starved = on_starved

    def read(self, size: int) -> bytes:
        with self.cond:
            while not self.chunks and not self.ended and not self.closed:
                self.starved = True
                self._on_starved()
                self.cond.wait()
            self.starved = False
            if self.closed or not self.chunks:
                # End of input, or closed: FFmpeg sees EOF and unwinds by itself (an
                # exception raised here would be swallowed by some demuxers, and PyAV
                # prints every swallowed one).
                return b""
            chunk = self.chunks.popleft()
            if len(chunk) > size:
                self.chunks.appendleft(chunk[size:])  # a view: no copy of the rest
                chunk = chunk[:size]
            return bytes(chunk)


class ContainerDecoder:
    """Decodes one stream in the FFmpeg format ``fmt`` to s16le mono at ``out_rate``.

    The loop side: :meth:`feed` bytes, :meth:`end` the input, and :meth:`read` the PCM
    until it answers ``b""`` (all that was fed is decoded; after :meth:`end`, the
    stream is over). :meth:`aclose` stops the thread, however the session ended.
    """

    def __init__(
        self, fmt: str, out_rate: int, *, label: str = "", piece_bytes: int = PIECE_BYTES
    ) -> None:
        self.fmt = fmt
        self.out_rate = out_rate
        self._piece_bytes = piece_bytes
        self._loop = asyncio.get_running_loop()
        self._pipe = _Pipe(self._wake)
        self._output: list[bytes] = []
        self._buffered = 0  # bytes in _output
        self._error: BaseException | None = None
        self._finished = False
        self._waiter: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"decode-{fmt}-{label}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def feed(self, data: bytes) -> None:
        """Hand ``data`` to the decoder thread (bytes after the stream's end are dropped)."""
        with self._pipe.cond:
            if not self._finished and data:
                self._pipe.chunks.append(memoryview(data))
                self._pipe.cond.notify_all()

    def end(self) -> None:
        """End of input: the thread decodes what is left, then ends."""
        with self._pipe.cond:
            self._pipe.ended = True
            self._pipe.cond.notify_all()

    async def read(self) -> bytes:
        """The next PCM, at most about :data:`PIECE_BYTES`; ``b""`` once everything fed
        so far is decoded (after :meth:`end`: once the thread has ended)."""
        while True:
            with self._pipe.cond:
                if self._output:
                    out, self._output, self._buffered = self._output, [], 0
                    self._pipe.cond.notify_all()  # the thread may wait for room
                    return b"".join(out)
                self._raise_if_failed()
                if self._finished:
                    break
                if self._pipe.starved and not self._pipe.chunks and not self._pipe.ended:
                    return b""  # the thread waits for more input
                waiter = self._new_waiter()
            await waiter
        self._join()
        return b""

    async def aclose(self) -> None:
        """Stop the thread (idempotent); returns once it has ended."""
        with self._pipe.cond:
            self._pipe.closed = True
            waiter = None if self._finished else self._new_waiter()
            self._pipe.cond.notify_all()
        if waiter is not None:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), _CLOSE_WAIT_S)
            except TimeoutError:
                log.warning("decoder thread %s did not stop in time", self._thread.name)
                return
        self._join()

    def _join(self) -> None:
        """The thread has signalled its end; only its return is left (microseconds)."""
        self._thread.join(timeout=1.0)

    # --- loop side helpers -------------------------------------------------------------

    def _new_waiter(self) -> asyncio.Future[None]:
        """Called with the pipe's lock held: the thread resolves it when starved, when
        a piece is ready, or when done."""
        self._waiter = self._loop.create_future()
        return self._waiter

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            error = self._error
            raise UnsupportedAudio(_describe(self.fmt, error)) from error

    # --- thread side -------------------------------------------------------------------

    def _wake(self) -> None:
        """Resolve the loop's waiter; called by the thread with the pipe's lock held."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:
                pass  # the loop is gone: nobody is waiting any more

    def _run(self) -> None:
        try:
            self._decode()
        except Exception as exc:
            if not self._pipe.closed:
                self._error = exc
        finally:
            with self._pipe.cond:
                self._finished = True
                self._wake()

    def _decode(self) -> None:
        container: Any = av.open(
            self._pipe,
            mode="r",
            format=self.fmt,
            buffer_size=_READ_BUFFER,
            container_options=_PROBE,
        )
        try:
            if not container.streams.audio:
                raise UnsupportedAudio("the stream holds no audio")
            stream = container.streams.audio[0]
            stream.codec_context.thread_count = 1
            resampler = _Resampler(self.out_rate, self._piece_bytes)
            decoded = False
            bad = 0
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    bad += 1
                    if not decoded or bad > _MAX_BAD_PACKETS:
                        raise
                    continue
                bad = 0
                if self._pipe.closed:
                    return
                for frame in frames:
                    decoded = True
                    for pcm in resampler.convert(frame):
                        self._emit(pcm)
            if not decoded and not self._pipe.closed:
                raise UnsupportedAudio("the stream ended before any audio")
            for pcm in resampler.convert(None):
                self._emit(pcm)
        finally:
            container.close()

    def _emit(self, pcm: bytes) -> None:
        """Hand PCM to the loop; wait while a piece of it is not taken yet."""
        if not pcm:
            return
        with self._pipe.cond:
            if self._pipe.closed:
                raise _Closed
            self._output.append(pcm)
            self._buffered += len(pcm)
            while self._buffered >= self._piece_bytes:
                self._wake()
                self._pipe.cond.wait()
                if self._pipe.closed:
                    raise _Closed


class _Resampler:
    """PyAV's resampler, rebuilt when a chained stream changes rate or layout.

    A frame that would come out larger than ``piece_bytes`` is resampled in parts, so
    one call never makes more than about a piece, whatever the frame's rate or length.
    """

    def __init__(self, out_rate: int, piece_bytes: int = PIECE_BYTES) -> None:
        self.out_rate = out_rate
        self.piece_bytes = piece_bytes
        self._shape: tuple[str, str, int] | None = None
        self._resampler: Any = None

    def convert(self, frame: Any) -> Iterator[bytes]:
        """The PCM of ``frame`` (``None``: the end), in pieces of about ``piece_bytes``."""
        if frame is None:
            if self._resampler is not None:
                yield self._drain(None)
            return
        if not MIN_RATE <= frame.sample_rate <= MAX_RATE:
            raise UnsupportedAudio(f"sample rate {frame.sample_rate} Hz is not supported")
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if shape != self._shape:
            if self._resampler is not None:
                yield self._drain(None)
            self._shape = shape
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.out_rate)
        # Input samples that resample to about one piece of output.
        most = max(1, self.piece_bytes * frame.sample_rate // (2 * self.out_rate))
        if frame.samples <= most:
            yield self._drain(frame)
            return
        for part in _parts(frame, most):
            yield self._drain(part)

    def _drain(self, frame: Any) -> bytes:
        return b"".join(
            bytes(o.planes[0])[: o.samples * 2] for o in self._resampler.resample(frame)
        )


def _parts(frame: Any, samples: int) -> Iterator[Any]:
    """``frame`` cut into frames of at most ``samples`` samples each."""
    array = frame.to_ndarray()  # planar: (channels, n); packed: (1, n * channels)
    step = samples * (1 if frame.format.is_planar else len(frame.layout.channels))
    for start in range(0, array.shape[1], step):
        part = av.AudioFrame.from_ndarray(
            array[:, start : start + step], format=frame.format.name, layout=frame.layout.name
        )
        part.sample_rate = frame.sample_rate
        yield part


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _describe(fmt: str, error: BaseException) -> str:
    name = {"matroska": "WebM/Matroska"}.get(fmt, fmt.upper())
    if isinstance(error, UnsupportedAudio):
        return f"Undecodable {name} audio: {error}"
    if isinstance(error, av.error.FFmpegError):
        detail = error.strerror or type(error).__name__
        return f"Undecodable {name} audio: {detail}"
    return f"Undecodable {name} audio: {type(error).__name__}: {error}"
