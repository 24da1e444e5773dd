"""Container audio (OGG, WebM, MP3, FLAC, coded WAV…) decoded as its bytes arrive.

FFmpeg's demuxers pull their input through a read callback, and PyAV calls a Python
file-like object's ``read`` from inside them. A :class:`ContainerDecoder` therefore
runs PyAV on a thread of its own that reads from a :class:`_Pipe`: the event loop
pushes bytes into the pipe, and ``read`` blocks the decoder thread when the pipe is
empty. That is the moment all pushed bytes have been demuxed, decoded and resampled,
so the thread tells the loop, and :meth:`ContainerDecoder.push` returns the PCM that
came out. The thread is parked on a condition variable between pieces (no CPU) and
ends with the stream: at end of input, on a decoding error, or when closed (``read``
then reports end of file and FFmpeg unwinds).

Cost per session: one thread, FFmpeg's demuxer, decoder and resampler state and a
16 KiB read buffer; WAV and raw PCM never come here (see :mod:`gateway.audio`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
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


class _Pipe:
    """A blocking byte pipe: the loop writes, the decoder thread reads."""

    def __init__(self, on_starved: Any) -> None:
        self.cond = threading.Condition()
        self.chunks: deque[bytes] = deque()
        self.ended = False
        self.closed = False
        self._on_starved = on_starved

    def read(self, size: int) -> bytes:
        with self.cond:
            while not self.chunks and not self.ended and not self.closed:
                self._on_starved()
                self.cond.wait()
            if self.closed or not self.chunks:
                # End of input, or closed: FFmpeg sees EOF and unwinds by itself (an
                # exception raised here would be swallowed by some demuxers, and PyAV
                # prints every swallowed one).
                return b""
            chunk = self.chunks.popleft()
            if len(chunk) > size:
                self.chunks.appendleft(chunk[size:])
                chunk = chunk[:size]
            return chunk


class ContainerDecoder:
    """Decodes one stream in the FFmpeg format ``fmt`` to s16le mono at ``out_rate``."""

    def __init__(self, fmt: str, out_rate: int, *, label: str = "") -> None:
        self.fmt = fmt
        self.out_rate = out_rate
        self._loop = asyncio.get_running_loop()
        self._pipe = _Pipe(self._wake)
        self._output: list[bytes] = []
        self._error: BaseException | None = None
        self._finished = False
        self._waiter: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"decode-{fmt}-{label}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def push(self, data: bytes) -> bytes:
        """Hand over ``data``; return the PCM decoded from everything pushed so far."""
        with self._pipe.cond:
            self._raise_if_failed()
            if self._finished:
                return b""  # the stream ended itself (trailing bytes after its end)
            self._pipe.chunks.append(data)
            waiter = self._new_waiter()
            self._pipe.cond.notify()
        await waiter
        self._raise_if_failed()
        return self._take()

    async def flush(self) -> bytes:
        """End of input: decode what is left and return it; the thread ends."""
        with self._pipe.cond:
            self._pipe.ended = True
            waiter = None if self._finished else self._new_waiter()
            self._pipe.cond.notify()
        if waiter is not None:
            await waiter
        self._join()
        self._raise_if_failed()
        return self._take()

    async def aclose(self) -> None:
        """Stop the thread (idempotent); returns once it has ended."""
        with self._pipe.cond:
            self._pipe.closed = True
            waiter = None if self._finished else self._new_waiter()
            self._pipe.cond.notify()
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
        """Called with the pipe's lock held: the thread resolves it when starved or done."""
        self._waiter = self._loop.create_future()
        return self._waiter

    def _take(self) -> bytes:
        with self._pipe.cond:
            out, self._output = self._output, []
        return b"".join(out)

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
            resampler = _Resampler(self.out_rate)
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
                    self._emit(resampler.convert(frame))
            if not decoded and not self._pipe.closed:
                raise UnsupportedAudio("the stream ended before any audio")
            self._emit(resampler.convert(None))
        finally:
            container.close()

    def _emit(self, pcm: bytes) -> None:
        if pcm:
            with self._pipe.cond:
                self._output.append(pcm)


class _Resampler:
    """PyAV's resampler, rebuilt when a chained stream changes rate or layout."""

    def __init__(self, out_rate: int) -> None:
        self.out_rate = out_rate
        self._shape: tuple[str, str, int] | None = None
        self._resampler: Any = None

    def convert(self, frame: Any) -> bytes:
        out = b""
        if frame is not None:
            shape = (frame.format.name, frame.layout.name, frame.sample_rate)
            if shape != self._shape:
                if self._resampler is not None:
                    out = self._drain(None)
                self._shape = shape
                self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.out_rate)
        elif self._resampler is None:
            return b""
        return out + self._drain(frame)

    def _drain(self, frame: Any) -> bytes:
        return b"".join(
            bytes(o.planes[0])[: o.samples * 2] for o in self._resampler.resample(frame)
        )


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
