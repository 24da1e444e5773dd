"""Audio fixtures made at test time: FFmpeg's encoders through PyAV, sox's libvorbis,
and WAV headers written by hand (float, 24-bit, ``WAVE_FORMAT_EXTENSIBLE``), which
Python's ``wave`` module cannot write.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np


class _Pipe:
    """Write-only: the muxer sees an unseekable output, as a browser's recorder does."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


@dataclass(frozen=True)
class Codec:
    """How to make one format: FFmpeg muxer and encoder, sample rate, channels."""

    name: str
    muxer: str
    encoder: str
    rate: int
    channels: int = 1
    bit_rate: int | None = None
    #: write as a live stream (unknown sizes, no index), like MediaRecorder
    live: bool = False


#: Every container format the gateway decodes, as clients commonly produce them.
CODECS = {
    "ogg-opus": Codec("ogg-opus", "ogg", "libopus", 48000, bit_rate=32000),
    "webm-opus": Codec("webm-opus", "webm", "libopus", 48000, channels=2, live=True),
    "mp3": Codec("mp3", "mp3", "libmp3lame", 44100, channels=2, bit_rate=64000),
    "flac": Codec("flac", "flac", "flac", 16000),
    "flac-44k-stereo": Codec("flac-44k-stereo", "flac", "flac", 44100, channels=2),
    "wav-alaw": Codec("wav-alaw", "wav", "pcm_alaw", 8000),
}


def encode(pcm: bytes, rate: int, codec: Codec) -> bytes:
    """Encode s16le mono ``pcm`` at ``rate`` with ``codec``; returns the file's bytes."""
    sink: Any = _Pipe() if codec.live else io.BytesIO()
    layout = "mono" if codec.channels == 1 else "stereo"
    with av.open(sink, "w", format=codec.muxer) as out:
        stream: Any = out.add_stream(codec.encoder, rate=codec.rate, layout=layout)
        if codec.bit_rate:
            stream.bit_rate = codec.bit_rate
        samples = np.frombuffer(pcm, np.int16)
        if codec.channels == 2:
            samples = np.repeat(samples[:, None], 2, axis=1).reshape(-1)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(
            format=stream.codec_context.format.name,
            layout=layout,
            rate=codec.rate,
            frame_size=stream.codec_context.frame_size or 1024,
        )
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(piece))
        out.mux(stream.encode(None))
    return bytes(sink.data) if codec.live else sink.getvalue()


def ogg_vorbis(wav: Path, quality: int = 3) -> bytes:
    """OGG/Vorbis by sox (libvorbis: what real files are made with)."""
    if shutil.which("sox") is None:
        raise RuntimeError("sox is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.ogg"
        subprocess.run(["sox", str(wav), "-C", str(quality), str(out)], check=True)
        return out.read_bytes()


def wav_header(
    rate: int,
    channels: int,
    bits: int,
    *,
    tag: int = 1,
    extensible: bool = False,
    data_bytes: int = 0,
    extra_chunks: bytes = b"",
) -> bytes:
    """A RIFF/WAVE header up to the start of the samples."""
    width = bits // 8
    block = width * channels
    fmt = struct.pack(
        "<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * block, block, bits
    )
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        mask = (1 << channels) - 1
        fmt += struct.pack("<HHI", 22, bits, mask) + struct.pack("<H", tag) + guid_tail
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", data_bytes)
    return b"RIFF" + struct.pack("<I", len(body) + data_bytes) + body


def pcm_as(samples: np.ndarray, fmt: str) -> bytes:
    """int16 samples (any channel layout, interleaved) in another sample format."""
    s = samples.astype(np.int32)
    if fmt == "U8":
        return ((s >> 8) + 128).astype(np.uint8).tobytes()
    if fmt == "S16LE":
        return s.astype("<i2").tobytes()
    if fmt == "S24LE":
        v = np.frombuffer((s << 8).astype("<i4").tobytes(), np.uint8).reshape(-1, 4)
        return v[:, :3].tobytes()  # the low three bytes of a 24-bit value
    if fmt == "S32LE":
        return (s << 16).astype("<i4").tobytes()
    if fmt == "F32LE":
        return (s / 32768.0).astype("<f4").tobytes()
    if fmt == "F64LE":
        return (s / 32768.0).astype("<f8").tobytes()
    raise ValueError(fmt)


def pcm_of(path: Path) -> bytes:
    """The sample frames of a WAV file, as they are."""
    with wave.open(str(path)) as wav:
        return bytes(wav.readframes(wav.getnframes()))


def read_wav(path: Path) -> bytes:
    """PCM of a 16 kHz mono s16 WAV file (the recordings' format); ValueError otherwise."""
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit")
        return bytes(w.readframes(w.getnframes()))


def espeak(text: str, out: Path, *, rate: int = 16000, speed: int = 140) -> Path:
    """Korean speech from espeak-ng (deterministic for a given text), as a mono s16 WAV."""
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "ko", "-s", str(speed), "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)], check=True)
    return out


def sentences_pcm(folder: Path, texts: list[str]) -> bytes:
    """The sentences as one 16 kHz stream: 0.3 s before each, 1.5 s pauses between them
    (they end segments), 0.2 s after the last (still open when the stream ends)."""
    pcm = b""
    for i, text in enumerate(texts):
        pause = 0.2 if i == len(texts) - 1 else 1.5
        speech = pcm_of(espeak(text, folder / f"s{i}.wav"))
        pcm += bytes(2 * 4800) + speech + bytes(int(2 * 16000 * pause))
    return pcm
