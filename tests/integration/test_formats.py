"""Every input format end to end through the cluster, against the 16 kHz WAV decode.

Fixtures are made at test time from two real recordings (``../shared/testdata``; the
espeak-ng sentence decodes too unstably to compare texts: two direct decodes of it can
differ): FFmpeg's encoders through PyAV (Opus in OGG and in WebM as a browser's
MediaRecorder writes it, MP3, FLAC), sox for OGG/Vorbis, and WAV variants written by
hand. Lossless formats at 16 kHz must give exactly the reference's text; lossy codecs
and a resampling round trip change it a little, so each has a CER bound with margin
over what was measured (measured values in the comments).
"""

from __future__ import annotations

import threading
import wave
from pathlib import Path

import numpy as np
import pytest

from harness.cluster import Cluster
from harness.media import CODECS, encode, ogg_vorbis, pcm_as, pcm_of, wav_header
from harness.scoring import cer
from harness.speech import assert_well_formed
from ksc.client import speech_url, stream


@pytest.fixture(scope="module")
def speech(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """Two real clips joined: about 15 s of speech, 16 kHz mono."""
    clips = sorted((testdata / "clips").glob("*.wav"))[:2]
    pcm = b"".join(pcm_of(c) for c in clips)
    path = tmp_path_factory.mktemp("formats") / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return path, pcm


@pytest.fixture(scope="module")
def reference_text(speech: tuple[Path, bytes], reference_decode) -> str:  # type: ignore[no-untyped-def]
    text = " ".join(f.text for f in reference_decode(speech[1]))
    assert text
    return text


def wav_variant(pcm: bytes, fmt: str, *, extensible: bool) -> bytes:
    bits = {"S24LE": 24, "F32LE": 32, "F64LE": 64, "S32LE": 32}[fmt]
    data = pcm_as(np.frombuffer(pcm, np.int16), fmt)
    tag = 3 if fmt.startswith("F") else 1
    return wav_header(16000, 1, bits, tag=tag, extensible=extensible, data_bytes=len(data)) + data


# name -> (bytes maker, CER bound over the reference decode; measured in the comment).
FORMATS = {
    "wav-f32": (lambda wav, pcm: wav_variant(pcm, "F32LE", extensible=False), 0.0),  # 0
    "wav-s24-extensible": (lambda wav, pcm: wav_variant(pcm, "S24LE", extensible=True), 0.0),  # 0
    "wav-f64-extensible": (lambda wav, pcm: wav_variant(pcm, "F64LE", extensible=True), 0.0),  # 0
    "flac": (lambda wav, pcm: encode(pcm, 16000, CODECS["flac"]), 0.0),  # 0
    # 16 -> 44.1 kHz stereo by the encoder, back to 16 kHz mono by the gateway
    "flac-44k-stereo": (lambda wav, pcm: encode(pcm, 16000, CODECS["flac-44k-stereo"]), 0.05),  # 0
    "webm-opus": (lambda wav, pcm: encode(pcm, 16000, CODECS["webm-opus"]), 0.10),  # 0.015
    "mp3": (lambda wav, pcm: encode(pcm, 16000, CODECS["mp3"]), 0.10),  # 0.030 (64 kb/s)
    "ogg-opus": (lambda wav, pcm: encode(pcm, 16000, CODECS["ogg-opus"]), 0.15),  # 0.075 (32 kb/s)
    "ogg-vorbis": (lambda wav, pcm: ogg_vorbis(wav), 0.25),  # 0.134 (sox -C 3)
}


@pytest.mark.parametrize("name", sorted(FORMATS))
async def test_format_end_to_end(
    running: Cluster, speech: tuple[Path, bytes], reference_text: str, name: str
) -> None:
    make, bound = FORMATS[name]
    data = make(*speech)
    # Pieces of 4000 bytes, as a client streams a file: the decoder sees them arrive.
    result = await stream(speech_url(running.ws), data, byterate=16000, realtime=False)
    assert_well_formed(result.messages)
    assert result.close_code == 1000
    edits, chars = cer(reference_text, result.text)
    print(f"CER {name}: {edits}/{chars} = {edits / chars:.3f}  {result.text!r}")
    assert edits / chars <= bound, (name, reference_text, result.text)


async def test_undecodable_container_gets_status_5_and_leaves_no_thread(
    running: Cluster, speech: tuple[Path, bytes]
) -> None:
    before = {t.ident for t in threading.enumerate()}
    data = b"OggS" + bytes(range(256)) * 64
    result = await stream(speech_url(running.ws), data, realtime=False)
    assert [m["status"] for m in result.messages] == [5]
    assert "Undecodable OGG audio" in result.messages[0]["message"]
    assert result.close_code == 1000
    assert {t.ident for t in threading.enumerate()} <= before


async def test_container_ending_inside_its_header(
    running: Cluster, speech: tuple[Path, bytes]
) -> None:
    data = encode(speech[1], 16000, CODECS["webm-opus"])[:60]
    result = await stream(speech_url(running.ws), data, realtime=False)
    assert [m["status"] for m in result.messages] == [5]
    assert "Undecodable WebM/Matroska audio" in result.messages[0]["message"]


async def test_truncated_container_decodes_what_arrived(
    running: Cluster, speech: tuple[Path, bytes], reference_text: str
) -> None:
    data = encode(speech[1], 16000, CODECS["ogg-opus"])
    result = await stream(speech_url(running.ws), data[: len(data) * 2 // 3], realtime=False)
    assert result.status == 0 and result.close_code == 1000
    assert result.text and len(result.text) < len(reference_text)
