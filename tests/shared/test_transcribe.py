"""Rendering transcripts and subtitles (pure logic)."""

from __future__ import annotations

import json

from shared.client import Transcript
from shared.transcribe import render


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
