"""Rendering transcripts and subtitles (pure logic)."""

from __future__ import annotations

import json

import pytest

from ksc.client import Transcript, speech_url
from ksc.transcribe import render


def final(segment: int, start: float, length: float, text: str) -> dict:  # type: ignore[type-arg]
    return {
        "status": 0,
        "id": "s",
        "segment": segment,
        "segment-start": start,
        "segment-length": length,
        "total-length": start + length,
        "result": {"hypotheses": [{"transcript": text}], "final": True},
    }


RESULT = Transcript(
    messages=[
        {
            "status": 0,
            "id": "s",
            "segment": 0,
            "result": {"hypotheses": [{"transcript": "안"}], "final": False},
        },
        final(0, 0.31, 2.5, "안녕하세요"),
        final(1, 3725.5, 1.0049, "반갑습니다"),
    ]
)


def test_srt() -> None:
    assert render(RESULT, "srt") == (
        "1\n00:00:00,310 --> 00:00:02,810\n안녕하세요\n\n"
        "2\n01:02:05,500 --> 01:02:06,505\n반갑습니다\n\n"
    )


def test_vtt() -> None:
    text = render(RESULT, "vtt")
    assert text.startswith("WEBVTT\n\n00:00:00.310 --> 00:00:02.810\n안녕하세요\n\n")


def test_text_and_json() -> None:
    assert render(RESULT, "text") == "안녕하세요 반갑습니다\n"
    doc = json.loads(render(RESULT, "json", "a.wav"))
    assert doc["text"] == "안녕하세요 반갑습니다" and doc["file"] == "a.wav"
    assert [s["index"] for s in doc["segments"]] == [0, 1]
    assert doc["segments"][1]["start"] == 3725.5
    assert [s["words"] for s in doc["segments"]] == [None, None]  # no word times sent


def test_json_has_each_segments_word_times() -> None:
    timed = final(0, 0.31, 2.5, "안녕 하세요")
    timed["result"]["hypotheses"][0]["word-alignment"] = [
        {"word": "안녕", "start": 0.4, "length": 0.6, "confidence": 1.0},
        {"word": "하세요", "start": 1.0, "length": 0.81, "confidence": 1.0},
    ]
    doc = json.loads(render(Transcript(messages=[timed]), "json", "a.wav"))
    assert doc["segments"][0]["words"] == [
        {"word": "안녕", "start": 0.4, "end": 1.0},
        {"word": "하세요", "start": 1.0, "end": 1.81},
    ]


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("ws://h:8888", "ws://h:8888/client/ws/speech?content-type="),
        ("http://h:8888/", "ws://h:8888/client/ws/speech?content-type="),
        ("https://h", "wss://h/client/ws/speech?content-type="),
        ("wss://h", "wss://h/client/ws/speech?content-type="),
    ],
)
def test_any_gateway_url_form_names_the_speech_socket(base: str, expected: str) -> None:
    assert speech_url(base) == expected


def test_audio_seconds_from_the_container() -> None:
    import io
    import wave

    from ksc.transcribe import audio_seconds

    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(bytes(2 * 16000 * 3))
    assert audio_seconds(buf.getvalue()) == pytest.approx(3.0)
    assert audio_seconds(bytes(32000)) is None  # raw PCM says nothing about itself
