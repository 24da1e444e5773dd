"""Caps parsing, format detection, decoding and normalisation (real PyAV, no Redis)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from gateway.audio import AudioInput, Normaliser, RawFormat, parse_caps
from gateway.formats import parse_wav, sniff
from harness.media import CODECS, encode, pcm_as, wav_header
from shared.protocol import BadRequest, UnsupportedAudio

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
        ("audio/x-raw-int; rate=16000; width=24", RawFormat(16000, "S24LE", 1)),
        ("audio/x-raw-float, rate=16000, width=64", RawFormat(16000, "F64LE", 1)),
        ('audio/x-raw, format="S16LE", rate=48000', RawFormat(48000, "S16LE", 1)),
        ("", None),
        ("audio/x-wav", None),
        ("audio/ogg", None),
        ("audio/webm;codecs=opus", None),
        ("application/octet-stream", None),
    ],
)
def test_parse_caps(caps: str, expected: RawFormat | None) -> None:
    assert parse_caps(caps) == expected


@pytest.mark.parametrize(
    ("caps", "unsupported"),
    [
        ("audio/x-raw, rate=(int)abc", False),
        ("audio/x-raw, rate", False),
        ("rate=16000", False),
        ("garbage", False),
        ("audio/x-raw, format=S24BE", True),
        ("audio/x-raw, rate=5", True),
        ("audio/x-raw, channels=99", True),
    ],
)
def test_malformed_caps_are_bad_requests(caps: str, unsupported: bool) -> None:
    """Malformed caps are bad requests; well-formed caps we cannot serve are
    unsupported audio (HTTP tells them apart: 400 and 415)."""
    with pytest.raises(BadRequest) as caught:
        parse_caps(caps)
    assert isinstance(caught.value, UnsupportedAudio) == unsupported


def tone(rate: int, seconds: float, channels: int = 1, freq: float = 440) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1).reshape(-1)


def push_in_pieces(norm: Normaliser, data: bytes, piece: int) -> bytes:
    out = b"".join(norm.push(data[i : i + piece]) for i in range(0, len(data), piece))
    return out + norm.flush()


async def feed(audio: AudioInput, data: bytes, piece: int) -> bytes:
    out = bytearray()
    try:
        for i in range(0, len(data), piece):
            out += await audio.push(data[i : i + piece])
        out += await audio.flush()
    finally:
        await audio.aclose()
    return bytes(out)


def peak_hz(pcm: bytes, rate: int = 16000) -> float:
    x = np.frombuffer(pcm, np.int16).astype(np.float64)
    return float(np.argmax(np.abs(np.fft.rfft(x))) * rate / len(x))


def decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("decode-")]


def test_matching_input_passes_through_untouched() -> None:
    data = tone(16000, 0.5).tobytes()
    assert push_in_pieces(Normaliser(RawFormat(), 16000), data, 333) == data


@pytest.mark.parametrize(
    ("rate", "channels", "fmt"),
    [
        (44100, 2, "S16LE"),
        (8000, 1, "S16LE"),
        (48000, 1, "F32LE"),
        (22050, 3, "S32LE"),
        (32000, 2, "S24LE"),
        (24000, 1, "F64LE"),
        (11025, 1, "U8"),
    ],
)
def test_resampled_length_and_pitch(rate: int, channels: int, fmt: str) -> None:
    data = pcm_as(tone(rate, 1.0, channels), fmt)
    out = push_in_pieces(Normaliser(RawFormat(rate, fmt, channels), 16000), data, 1001)
    pcm = np.frombuffer(out, np.int16).astype(np.float64)
    assert abs(len(pcm) - 16000) <= 64
    # The 440 Hz tone survives: the spectrum's peak is within a couple of bins of it.
    assert abs(peak_hz(out) - 440) < 5
    assert 4000 < np.abs(pcm).max() < 9000


# --- WAV, on the event loop ---------------------------------------------------------------


def wav_bytes(rate: int, channels: int, fmt: str, samples: np.ndarray, **kw: object) -> bytes:
    tag = 3 if fmt.startswith("F") else 1
    bits = {"U8": 8, "S16LE": 16, "S24LE": 24, "S32LE": 32, "F32LE": 32, "F64LE": 64}[fmt]
    data = pcm_as(samples, fmt)
    return wav_header(rate, channels, bits, tag=tag, data_bytes=len(data), **kw) + data  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["U8", "S16LE", "S24LE", "S32LE", "F32LE", "F64LE"])
@pytest.mark.parametrize("extensible", [False, True])
async def test_every_pcm_wav_is_read_without_a_thread(fmt: str, extensible: bool) -> None:
    samples = tone(16000, 0.5)
    audio = AudioInput("", 16000)
    out = await feed(audio, wav_bytes(16000, 1, fmt, samples, extensible=extensible), 999)
    assert audio.kind == "wav" and not audio.threaded
    got = np.frombuffer(out, np.int16).astype(np.int32)
    assert len(got) == len(samples)
    tolerance = 256 if fmt == "U8" else 1  # 8-bit keeps only the top byte
    assert np.abs(got - samples).max() <= tolerance


async def test_wav_detected_from_header_in_small_pieces() -> None:
    pcm = tone(16000, 0.5).tobytes()
    data = wav_header(16000, 1, 16, data_bytes=len(pcm)) + pcm
    assert await feed(AudioInput("", 16000), data, 7) == pcm


async def test_wav_chunks_before_and_after_the_samples_are_skipped() -> None:
    pcm = tone(16000, 0.25).tobytes()
    header = wav_header(16000, 1, 16, data_bytes=len(pcm), extra_chunks=b"LIST\x04\0\0\0abcd")
    data = header + pcm + b"LIST\x04\x00\x00\x00abcd"
    assert await feed(AudioInput("", 16000), data, 4096) == pcm


async def test_streamed_wav_without_a_length_takes_everything() -> None:
    pcm = tone(16000, 0.25).tobytes()
    data = wav_header(16000, 1, 16, data_bytes=0) + pcm
    assert await feed(AudioInput("", 16000), data, 1000) == pcm


async def test_stereo_44k_wav_is_normalised() -> None:
    data = wav_bytes(44100, 2, "S16LE", tone(44100, 1.0, 2))
    out = await feed(AudioInput("", 16000), data, 5000)
    assert abs(len(out) // 2 - 16000) <= 64


async def test_audio_ending_inside_the_header() -> None:
    audio = AudioInput("", 16000)
    assert await audio.push(b"RIFF\x24\x00\x00\x00WAVE") == b""
    with pytest.raises(UnsupportedAudio, match="inside the WAV header"):
        await audio.flush()


async def test_no_audio_at_all_is_not_an_error() -> None:
    assert await feed(AudioInput("", 16000), b"", 1) == b""


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"RIFF\0\0\0\0WAVEfmt ", "wav"),
        (b"OggS\0\2", "ogg"),
        (b"\x1a\x45\xdf\xa3\x9f", "matroska"),
        (b"fLaC\0\0\0\x22", "flac"),
        (b"ID3\4\0", "mp3"),
        (b"\xff\xfb\x90\x64", "mp3"),
        (b"\xff\xf1\x50\x80", "aac"),
        (b"RIF", None),
        (b"Og", None),
    ],
)
def test_sniff(head: bytes, kind: str | None) -> None:
    assert sniff(head) == kind


@pytest.mark.parametrize("head", [b"NOTAWAVEFILE", b"\0\0\0\0", b"RIFX1234AVI "])
def test_sniff_refuses_what_it_does_not_know(head: bytes) -> None:
    with pytest.raises(UnsupportedAudio, match="not a WAV file"):
        sniff(head)


def test_wav_header_of_a_truncated_fmt_chunk_is_incomplete() -> None:
    header = wav_header(16000, 1, 16)
    assert parse_wav(header[:30]) is None
    assert parse_wav(header) is not None


# --- containers, on a thread per session ---------------------------------------------------


@pytest.fixture(scope="module")
def tone_pcm() -> bytes:
    return tone(16000, 2.0).tobytes()


@pytest.mark.parametrize("name", sorted(CODECS))
async def test_container_decoded_in_pieces(name: str, tone_pcm: bytes) -> None:
    codec = CODECS[name]
    data = encode(tone_pcm, 16000, codec)
    audio = AudioInput("", 16000, label=name)
    out = bytearray()
    for i in range(0, len(data), 1500):
        out += await audio.push(data[i : i + 1500])
        if i <= 0.75 * len(data) < i + 1500:
            assert audio.threaded and len(decoder_threads()) == 1
            assert out, "audio comes out while the stream is still arriving"
    out += await audio.flush()
    await audio.aclose()
    assert not decoder_threads()
    assert abs(len(out) / 2 - 32000) < 0.1 * 16000, len(out)
    assert abs(peak_hz(bytes(out)) - 440) < 5


async def test_content_type_of_a_container_means_detect(tone_pcm: bytes) -> None:
    data = encode(tone_pcm, 16000, CODECS["flac"])
    audio = AudioInput("audio/flac", 16000)
    assert len(await feed(audio, data, 4096)) == len(tone_pcm)
    assert audio.kind == "flac"


async def test_garbage_after_a_container_magic_is_undecodable() -> None:
    audio = AudioInput("", 16000)
    with pytest.raises(UnsupportedAudio, match="Undecodable OGG audio"):
        await feed(audio, b"OggS" + bytes(range(256)) * 40, 1000)
    assert not decoder_threads()


async def test_stream_ending_inside_the_container_header(tone_pcm: bytes) -> None:
    data = encode(tone_pcm, 16000, CODECS["ogg-opus"])
    with pytest.raises(UnsupportedAudio, match="Undecodable OGG audio"):
        await feed(AudioInput("", 16000), data[:40], 10)
    assert not decoder_threads()


@pytest.mark.parametrize(
    ("name", "least"),
    # FLAC: FFmpeg's parser holds about ten frames back to validate frame headers, and
    # a cut frame at the end takes them with it (about 0.6 s here).
    [("ogg-opus", 0.35), ("webm-opus", 0.35), ("mp3", 0.35), ("flac", 0.15)],
)
async def test_stream_cut_in_the_middle_gives_what_arrived(
    name: str, least: float, tone_pcm: bytes
) -> None:
    data = encode(tone_pcm, 16000, CODECS[name])
    out = await feed(AudioInput("", 16000), data[: len(data) // 2 + 7], 2048)
    assert least * len(tone_pcm) < len(out) < 0.65 * len(tone_pcm)
    assert not decoder_threads()


async def test_closing_mid_stream_stops_the_thread(tone_pcm: bytes) -> None:
    data = encode(tone_pcm, 16000, CODECS["mp3"])
    audio = AudioInput("", 16000)
    await audio.push(data[:5000])
    assert len(decoder_threads()) == 1
    await audio.aclose()
    await audio.aclose()  # idempotent
    assert not decoder_threads()


async def test_cancelled_session_stops_the_thread(tone_pcm: bytes) -> None:
    data = encode(tone_pcm, 16000, CODECS["webm-opus"])
    audio = AudioInput("", 16000)

    async def session() -> None:
        try:
            for i in range(0, len(data), 500):
                await audio.push(data[i : i + 500])
                await asyncio.sleep(0.01)
        finally:
            await audio.aclose()

    task = asyncio.create_task(session())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not decoder_threads()


async def test_many_sessions_leave_no_thread(tone_pcm: bytes) -> None:
    data = encode(tone_pcm, 16000, CODECS["ogg-opus"])
    before = threading.active_count()
    outs = await asyncio.gather(*(feed(AudioInput("", 16000), data, 3000) for _ in range(20)))
    assert len({len(o) for o in outs}) == 1
    assert threading.active_count() == before
