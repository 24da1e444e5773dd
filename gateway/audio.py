"""Where audio is normalised: whatever the client sends becomes s16le mono PCM at the
model's sample rate before it goes onto the session's audio stream.

The input format comes from the client's ``content-type`` (a GStreamer caps string or
a MIME type with parameters, for raw PCM) or, when that is empty or names another
media type, from the bytes themselves (:mod:`gateway.formats`). Two paths:

* **PCM** — raw, or WAV with integer or float samples (plain or extensible): the
  header is parsed here and the samples converted on the event loop, no thread, a
  few microseconds per piece. Input that already matches the model passes untouched.
* **Containers** — OGG, WebM/Matroska, MP3, FLAC, AAC and coded WAV: decoded by
  FFmpeg on a thread per session (:mod:`gateway.containers`) as the bytes arrive.

Resampling and down-mixing use FFmpeg's libswresample through PyAV on both paths.

**Bounds.** What comes out is bounded however far the input expands (raw U8 at 1 kHz
grows 32-fold, a FLAC of silence a thousand-fold): the session feeds a piece of input
(:meth:`AudioInput.feed`), then reads its PCM (:meth:`AudioInput.read`) about
:data:`PIECE_BYTES` at a time, writing each before the next is made. And the audio a
session may get out of its bytes is bounded: at most :data:`EXPANSION_GRACE_S` seconds
plus one second per :data:`MIN_BYTES_PER_SECOND` bytes received (4 kbit/s, below any
codec's speech bitrate; raw PCM is at least 8 kbit/s). More is a decompression bomb:
:class:`~shared.protocol.BadRequest`, status 5.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import av
import numpy as np

from gateway.containers import PIECE_BYTES, ContainerDecoder
from gateway.formats import SNIFF_BYTES, WAV, parse_wav, sniff
from shared.protocol import BadRequest, UnsupportedAudio

#: caps format name -> (PyAV sample format after unpacking, bytes per sample)
_FORMATS = {
    "S16LE": ("s16", 2),
    "S24LE": ("s32", 3),
    "S32LE": ("s32", 4),
    "F32LE": ("flt", 4),
    "F64LE": ("dbl", 8),
    "U8": ("u8", 1),
}
_RAW_TYPES = ("audio/x-raw", "audio/x-raw-int", "audio/x-raw-float")
_DTYPES = {"s16": np.int16, "s32": np.int32, "flt": np.float32, "dbl": np.float64, "u8": np.uint8}
#: Audio any session may get out of its first bytes (headers, a FLAC's digital silence).
EXPANSION_GRACE_S = 60.0
#: Beyond the grace, each second of audio needs this many bytes of input: 4 kbit/s.
MIN_BYTES_PER_SECOND = 500


@dataclass(frozen=True)
class RawFormat:
    """Interleaved PCM as described by a caps string."""

    rate: int = 16000
    format: str = "S16LE"
    channels: int = 1

    @property
    def frame_bytes(self) -> int:
        return _FORMATS[self.format][1] * self.channels


def _caps_value(raw: str) -> str:
    """``(int)16000`` -> ``16000``; GStreamer prefixes a value with its type."""
    raw = raw.strip()
    if raw.startswith("(") and ")" in raw:
        raw = raw[raw.index(")") + 1 :]
    return raw.strip().strip('"')


def parse_caps(caps: str) -> RawFormat | None:
    """Parse a GStreamer caps string (or a MIME type with parameters).

    Returns the raw PCM format, or ``None`` when the input is a container whose
    format must be detected from the bytes (empty caps or a non-raw media type).
    Fields may be separated by ``,`` (caps) or ``;`` (HTTP Content-Type).
    """
    parts = [p.strip() for p in caps.replace(";", ",").split(",") if p.strip()]
    if not parts:
        return None
    media = parts[0].lower()
    if media not in _RAW_TYPES:
        if "/" not in media or "=" in media:
            raise BadRequest(f"Malformed content type {caps!r}")
        return None
    fields: dict[str, str] = {}
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise BadRequest(f"Malformed content type field {part!r}")
        fields[name.strip().lower()] = _caps_value(value)
    try:
        rate = int(fields.get("rate", 16000))
        channels = int(fields.get("channels", 1))
    except ValueError as exc:
        raise BadRequest(f"Malformed rate or channels in {caps!r}") from exc
    fmt = fields.get("format", "").upper() or _legacy_format(media, fields)
    if fmt not in _FORMATS:
        raise UnsupportedAudio(
            f"Unsupported sample format {fmt!r}; use one of {', '.join(_FORMATS)}"
        )
    if not 1000 <= rate <= 384000 or not 1 <= channels <= 8:
        raise UnsupportedAudio(f"Unsupported rate {rate} or channel count {channels}")
    return RawFormat(rate=rate, format=fmt, channels=channels)


def _legacy_format(media: str, fields: dict[str, str]) -> str:
    """GStreamer 0.10 caps (``audio/x-raw-int, width=16``) name no format."""
    width = fields.get("width", "16")
    if media == "audio/x-raw-float":
        return f"F{width}LE"
    return {"8": "U8"}.get(width, f"S{width}LE")


class Normaliser:
    """Converts a stream of interleaved PCM to s16le mono at ``out_rate``.

    Chunks may split sample frames anywhere; the remainder is carried over.
    """

    def __init__(self, fmt: RawFormat, out_rate: int) -> None:
        self.fmt = fmt
        self.out_rate = out_rate
        self._carry = b""
        self._passthrough = fmt == RawFormat(rate=out_rate, format="S16LE", channels=1)
        self._av_format = _FORMATS[fmt.format][0]
        self._layout = "mono" if fmt.channels == 1 else "stereo" if fmt.channels == 2 else ""
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        self._dtype = np.dtype(_DTYPES[self._av_format])

    def push(self, data: bytes) -> bytes:
        data = self._carry + data
        usable = len(data) - len(data) % self.fmt.frame_bytes
        self._carry = data[usable:]
        if usable == 0:
            return b""
        if self._passthrough:
            return data[:usable]
        samples: Any
        if self.fmt.format == "S24LE":
            # Three bytes per sample: place them in the top of an int32 (sign included).
            b = np.frombuffer(data, np.uint8, count=usable).reshape(-1, 3).astype(np.int32)
            samples = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)
        else:
            samples = np.frombuffer(data, dtype=self._dtype, count=usable // self._dtype.itemsize)
        if not self._layout:
            # More than two channels: PyAV needs a named layout, so average them here.
            mono = samples.reshape(-1, self.fmt.channels).astype(np.float32).mean(axis=1)
            samples = mono.astype(self._dtype)
            layout = "mono"
        else:
            layout = self._layout
        frame = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1), format=self._av_format, layout=layout
        )
        frame.sample_rate = self.fmt.rate
        return self._convert(frame)

    def flush(self) -> bytes:
        self._carry = b""
        return b"" if self._passthrough else self._convert(None)

    def _convert(self, frame: av.AudioFrame | None) -> bytes:
        return b"".join(
            bytes(out.planes[0])[: out.samples * 2] for out in self._resampler.resample(frame)
        )


class _Stage(Protocol):
    def feed(self, data: bytes) -> None: ...
    def end(self) -> None: ...
    async def read(self) -> bytes: ...
    async def aclose(self) -> None: ...


class _PcmStage:
    """PCM on the event loop: at most ``limit`` bytes of it (a WAV data chunk),
    converted a slice at a time so that each :meth:`read` gives about ``piece_bytes``."""

    def __init__(
        self, normaliser: Normaliser, limit: int | None = None, *, piece_bytes: int = PIECE_BYTES
    ) -> None:
        self._normaliser = normaliser
        self._remaining = limit
        self._input: deque[memoryview] = deque()
        self._ended = False
        fmt = normaliser.fmt
        out_per_frame = 2 * normaliser.out_rate / fmt.rate  # output bytes per input frame
        self._slice = max(1, int(piece_bytes / out_per_frame)) * fmt.frame_bytes

    def feed(self, data: bytes) -> None:
        if self._remaining is not None:
            data = data[: self._remaining]
            self._remaining -= len(data)
        if data:
            self._input.append(memoryview(data))

    def end(self) -> None:
        self._ended = True

    async def read(self) -> bytes:
        while self._input:
            data = self._input.popleft()
            if len(data) > self._slice:
                self._input.appendleft(data[self._slice :])  # a view: no copy of the rest
                data = data[: self._slice]
            out = self._normaliser.push(bytes(data))
            if out:
                return out
        if self._ended:
            self._ended = False  # flushed once
            return self._normaliser.flush()
        return b""

    async def aclose(self) -> None:
        pass


class AudioInput:
    """One session's input: format detection (if needed), then decoding and normalisation.

    :meth:`feed` input, :meth:`end` it at ``EOS``, and :meth:`read` the PCM until it
    answers ``b""``: each read gives at most about :data:`PIECE_BYTES`, so a piece of
    input that expands far never sits in memory whole. ``read`` is a coroutine because
    containers decode on a thread; on the PCM path it returns without suspending.
    :meth:`push` and :meth:`flush` do both steps and join the PCM (small inputs, tests).
    ``aclose`` must be called when the session ends, however it ends (it stops a
    decoder thread; idempotent).
    """

    def __init__(
        self, caps: str, out_rate: int, *, label: str = "", piece_bytes: int = PIECE_BYTES
    ) -> None:
        self.out_rate = out_rate
        self.label = label
        self.piece_bytes = piece_bytes
        fmt = parse_caps(caps)
        #: what the input turned out to be: ``raw``, ``wav``, ``ogg``… (``None`` until known)
        self.kind: str | None = "raw" if fmt is not None else None
        #: bytes received, and samples of audio made of them
        self.received = 0
        self.produced = 0
        self._head = b""
        self._stage: _Stage | None = None
        if fmt is not None:
            self._stage = _PcmStage(Normaliser(fmt, out_rate), piece_bytes=piece_bytes)

    @property
    def threaded(self) -> bool:
        """Whether a decoder thread serves this input."""
        return isinstance(self._stage, ContainerDecoder)

    def feed(self, data: bytes) -> None:
        """Take a piece of input; its PCM comes out of :meth:`read`."""
        self.received += len(data)
        if self._stage is None:
            data = self._detect(data, final=False)
            if self._stage is None:
                return
        self._stage.feed(data)

    def end(self) -> None:
        """The input is complete (``EOS``): :meth:`read` gives what is left."""
        if self._stage is None:
            if not self._head:
                return  # no audio at all
            data = self._detect(b"", final=True)
            if self._stage is None:
                kind = (self.kind or "audio").upper()
                raise UnsupportedAudio(f"Audio ended inside the {kind} header")
            self._stage.feed(data)
        self._stage.end()

    async def read(self) -> bytes:
        """The next PCM (s16le mono at ``out_rate``), ``b""`` when all input so far is
        converted. Raises :class:`BadRequest` when the input expands beyond the bound."""
        if self._stage is None:
            return b""
        pcm = await self._stage.read()
        self.produced += len(pcm) // 2
        seconds = self.produced / self.out_rate
        allowed = EXPANSION_GRACE_S + self.received / MIN_BYTES_PER_SECOND
        if seconds > allowed:
            raise BadRequest(
                f"Audio expands beyond {EXPANSION_GRACE_S:g} s plus 1 s per "
                f"{MIN_BYTES_PER_SECOND} bytes: {seconds:.0f} s of audio from "
                f"{self.received} bytes"
            )
        return pcm

    async def push(self, data: bytes) -> bytes:
        """:meth:`feed`, then every :meth:`read`, joined."""
        self.feed(data)
        return await self._read_all()

    async def flush(self) -> bytes:
        """:meth:`end`, then every :meth:`read`, joined."""
        self.end()
        return await self._read_all()

    async def aclose(self) -> None:
        if self._stage is not None:
            await self._stage.aclose()

    async def _read_all(self) -> bytes:
        out = []
        while pcm := await self.read():
            out.append(pcm)
        return b"".join(out)

    def _detect(self, data: bytes, *, final: bool) -> bytes:
        """Buffer until the format is known; set up the stage; return its first input."""
        buf = self._head + data
        self._head = buf
        kind = self.kind or sniff(buf[:SNIFF_BYTES], final=final)
        if kind is None:
            return b""
        self.kind = kind
        if kind == WAV:
            wav = parse_wav(buf)
            if wav is None:
                return b""
            if wav.sample_format is not None:
                self._head = b""
                fmt = RawFormat(rate=wav.rate, format=wav.sample_format, channels=wav.channels)
                self._stage = _PcmStage(
                    Normaliser(fmt, self.out_rate), wav.data_bytes, piece_bytes=self.piece_bytes
                )
                return buf[wav.data_offset :]
        self._head = b""
        self._stage = ContainerDecoder(
            kind, self.out_rate, label=self.label, piece_bytes=self.piece_bytes
        )
        return buf
