"""Caps parsing, WAV detection and normalisation (real PyAV resampler, no Redis)."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from gateway.audio import AudioInput, Normaliser, RawFormat, parse_caps
from shared.protocol import BadRequest

GST_CAPS = (
    "audio/x-raw, layout=(string)interleaved, rate=(int)44100, "
    "format=(string)S16LE, channels=(int)2"
)


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        (GST_CAPS, RawFormat(44100, "S16LE", 2)),
        ("audio/x-raw", RawFormat(16000, "S16LE", 1)),
        ("audio/x-raw; rate=8000; format=F32LE", RawFormat(8000, "F32LE", 1)),
        ("audio/x-raw-int, rate=22050, width=32, channels=1", RawFormat(22050, "S32LE", 1)),
        ('audio/x-raw, format="S16LE", rate=48000', RawFormat(48000, "S16LE", 1)),
        ("", None),
        ("audio/x-wav", None),
        ("audio/ogg", None),
    ],
)
def test_parse_caps(caps: str, expected: RawFormat | None) -> None:
    assert parse_caps(caps) == expected


@pytest.mark.parametrize(
    "caps",
    [
        "audio/x-raw, rate=(int)abc",
        "audio/x-raw, rate",
        "audio/x-raw, format=S24BE",
        "audio/x-raw, rate=5",
        "audio/x-raw, channels=99",
        "rate=16000",
        "garbage",
    ],
)
def test_malformed_caps_are_bad_requests(caps: str) -> None:
    with pytest.raises(BadRequest):
        parse_caps(caps)


def tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1).reshape(-1)


def push_in_pieces(norm: Normaliser | AudioInput, data: bytes, piece: int) -> bytes:
    out = b"".join(norm.push(data[i : i + piece]) for i in range(0, len(data), piece))
    return out + norm.flush()


def test_matching_input_passes_through_untouched() -> None:
    data = tone(16000, 0.5).tobytes()
    assert push_in_pieces(Normaliser(RawFormat(), 16000), data, 333) == data


@pytest.mark.parametrize(
    ("rate", "channels", "fmt"),
    [(44100, 2, "S16LE"), (8000, 1, "S16LE"), (48000, 1, "F32LE"), (22050, 3, "S32LE")],
)
def test_resampled_length_and_pitch(rate: int, channels: int, fmt: str) -> None:
    samples = tone(rate, 1.0, channels)
    if fmt == "F32LE":
        data = (samples / 32768).astype(np.float32).tobytes()
    elif fmt == "S32LE":
        data = (samples.astype(np.int32) << 16).tobytes()
    else:
        data = samples.tobytes()
    out = push_in_pieces(Normaliser(RawFormat(rate, fmt, channels), 16000), data, 1001)
    pcm = np.frombuffer(out, np.int16).astype(np.float64)
    assert abs(len(pcm) - 16000) <= 64
    # The 440 Hz tone survives: the spectrum's peak is within a couple of bins of it.
    peak = np.argmax(np.abs(np.fft.rfft(pcm))) * 16000 / len(pcm)
    assert abs(peak - 440) < 5
    assert 4000 < np.abs(pcm).max() < 9000


def wav_bytes(rate: int, channels: int, width: int, frames: bytes) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def test_wav_detected_from_header_in_small_pieces() -> None:
    pcm = tone(16000, 0.5).tobytes()
    data = wav_bytes(16000, 1, 2, pcm)
    assert push_in_pieces(AudioInput("", 16000), data, 7) == pcm


def test_wav_trailing_chunks_are_not_audio() -> None:
    pcm = tone(16000, 0.25).tobytes()
    data = wav_bytes(16000, 1, 2, pcm) + b"LIST\x04\x00\x00\x00abcd"
    assert push_in_pieces(AudioInput("", 16000), data, 4096) == pcm


def test_stereo_44k_wav_is_normalised() -> None:
    data = wav_bytes(44100, 2, 2, tone(44100, 1.0, 2).tobytes())
    out = push_in_pieces(AudioInput("", 16000), data, 5000)
    assert abs(len(out) // 2 - 16000) <= 64


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"OggS" + b"\0" * 100, "not a WAV file"),
        # A float WAV (format 3): the standard library reads PCM only; the compatibility
        # work routes such files through PyAV.
        (
            b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x03\x00" + b"\0" * 14 + b"data\0\0\0\0",
            "Unsupported WAV",
        ),
    ],
)
def test_undetectable_input_is_a_bad_request(data: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        AudioInput("", 16000).push(data)


def test_audio_ending_inside_the_header() -> None:
    audio = AudioInput("", 16000)
    assert audio.push(b"RIFF\x24\x00\x00\x00WAVE") == b""
    with pytest.raises(BadRequest, match="inside the WAV header"):
        audio.flush()
