"""Where audio is normalised: whatever the client sends becomes s16le mono PCM at the
model's sample rate before it goes onto the session's audio stream.

The input format comes from the client's ``content-type`` (a GStreamer caps string for
raw PCM) or, when that is empty, from the bytes themselves (a WAV header). Resampling
and down-mixing use FFmpeg's libswresample through PyAV; input that already matches
the model's format passes through untouched.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from shared.protocol import BadRequest

#: caps format name -> (PyAV sample format, bytes per sample)
_FORMATS = {"S16LE": ("s16", 2), "S32LE": ("s32", 4), "F32LE": ("flt", 4), "U8": ("u8", 1)}
_RAW_TYPES = ("audio/x-raw", "audio/x-raw-int", "audio/x-raw-float")
#: A WAV header larger than this is not a WAV header we accept.
_MAX_HEADER = 64 * 1024


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
        raise BadRequest(f"Unsupported sample format {fmt!r}; use one of {', '.join(_FORMATS)}")
    if not 1000 <= rate <= 384000 or not 1 <= channels <= 8:
        raise BadRequest(f"Unsupported rate {rate} or channel count {channels}")
    return RawFormat(rate=rate, format=fmt, channels=channels)


def _legacy_format(media: str, fields: dict[str, str]) -> str:
    """GStreamer 0.10 caps (``audio/x-raw-int, width=16``) name no format."""
    width = fields.get("width", "16")
    if media == "audio/x-raw-float":
        return "F32LE" if width == "32" else f"F{width}LE"
    return {"8": "U8", "16": "S16LE", "32": "S32LE"}.get(width, f"S{width}LE")


class Normaliser:
    """Converts a stream of interleaved PCM to s16le mono at ``out_rate``.

    Chunks may split sample frames anywhere; the remainder is carried over.
    """

    def __init__(self, fmt: RawFormat, out_rate: int) -> None:
        self.fmt = fmt
        self._carry = b""
        self._passthrough = fmt == RawFormat(rate=out_rate, format="S16LE", channels=1)
        self._av_format = _FORMATS[fmt.format][0]
        self._layout = "mono" if fmt.channels == 1 else "stereo" if fmt.channels == 2 else ""
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        self._dtype = np.dtype(
            {"s16": np.int16, "s32": np.int32, "flt": np.float32, "u8": np.uint8}[self._av_format]
        )

    def push(self, data: bytes) -> bytes:
        data = self._carry + data
        usable = len(data) - len(data) % self.fmt.frame_bytes
        self._carry = data[usable:]
        if usable == 0:
            return b""
        if self._passthrough:
            return data[:usable]
        samples: Any = np.frombuffer(data, dtype=self._dtype, count=usable // self._dtype.itemsize)
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


class AudioInput:
    """One session's input: format detection (if needed), then normalisation."""

    def __init__(self, caps: str, out_rate: int) -> None:
        self.out_rate = out_rate
        fmt = parse_caps(caps)
        self._header = b""
        self._remaining: int | None = None  # bytes left in the WAV data chunk
        self._normaliser = Normaliser(fmt, out_rate) if fmt is not None else None

    def push(self, data: bytes) -> bytes:
        if self._normaliser is None:
            data = self._sniff(data)
            if self._normaliser is None:
                return b""
        if self._remaining is not None:
            data = data[: self._remaining]
            self._remaining -= len(data)
        return self._normaliser.push(data)

    def flush(self) -> bytes:
        if self._normaliser is None:
            if self._header:
                raise BadRequest("Audio ended inside the WAV header")
            return b""
        return self._normaliser.flush()

    def _sniff(self, data: bytes) -> bytes:
        """Buffer until a WAV header is complete; return the audio bytes after it."""
        buf = self._header + data
        if len(buf) >= 12 and not (buf[:4] == b"RIFF" and buf[8:12] == b"WAVE"):
            raise BadRequest(
                "Unsupported audio: not a WAV file; send WAV, or raw PCM with a "
                "content-type such as audio/x-raw, rate=16000, format=S16LE, channels=1"
            )
        start = _data_offset(buf)
        if start is None:
            if len(buf) > _MAX_HEADER:
                raise BadRequest("WAV header too large")
            self._header = buf
            return b""
        try:
            with wave.open(io.BytesIO(buf), "rb") as wav:
                width, rate, channels = wav.getsampwidth(), wav.getframerate(), wav.getnchannels()
                declared = wav.getnframes() * width * channels
        except (wave.Error, EOFError, ValueError) as exc:
            raise BadRequest(f"Unsupported WAV file: {exc}") from exc
        fmt = {1: "U8", 2: "S16LE", 4: "S32LE"}.get(width)
        if fmt is None or not 1 <= channels <= 8 or not 1000 <= rate <= 384000:
            raise BadRequest(f"Unsupported WAV format: {width * 8}-bit, {channels} ch, {rate} Hz")
        self._header = b""
        # Streamed WAVs often declare a zero or maximal length: then take all that comes.
        if 0 < declared < 0xFFFFFF00:
            self._remaining = declared
        self._normaliser = Normaliser(
            RawFormat(rate=rate, format=fmt, channels=channels), self.out_rate
        )
        return buf[start:]


def _data_offset(buf: bytes) -> int | None:
    """Where the samples of a RIFF/WAVE file start, or None if the header is incomplete."""
    pos = 12
    while pos + 8 <= len(buf):
        size = int.from_bytes(buf[pos + 4 : pos + 8], "little")
        if buf[pos : pos + 4] == b"data":
            return pos + 8
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None
