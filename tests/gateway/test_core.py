"""The gateway's pure session core: what the client is sent, and when it closes."""

from __future__ import annotations

import json

import pytest

from gateway.core import Phase, SessionCore
from shared.protocol import BadRequest, NoDecoderAvailable
from shared.wire import Claimed, Done, Failed, FinalResult, PartialResult


def final(segment: int, text: str = "안녕") -> FinalResult:
    return FinalResult(segment, text, 1.5, start=segment * 2.0, length=1.0, total=segment * 2.0 + 1)


def streaming() -> SessionCore:
    core = SessionCore("sid")
    core.on_event(Claimed("w1"))
    return core


def test_results_in_kgs_shape() -> None:
    core = streaming()
    [partial] = core.on_event(PartialResult(0, "안")).messages
    [fin] = core.on_event(final(0)).messages
    assert json.loads(partial) == {
        "status": 0,
        "segment": 0,
        "id": "sid",
        "result": {"hypotheses": [{"transcript": "안"}], "final": False},
    }
    msg = json.loads(fin)
    assert msg["result"] == {
        "hypotheses": [{"transcript": "안녕", "likelihood": 1.5}],
        "final": True,
    }
    assert (msg["segment-start"], msg["segment-length"], msg["total-length"]) == (0.0, 1.0, 1.0)


def test_duplicates_and_stale_partials_are_dropped() -> None:
    core = streaming()
    assert core.on_event(final(0)).messages
    assert core.on_event(final(0)).messages == []  # a replayed final
    assert core.on_event(PartialResult(0, "late")).messages == []  # partial of a done segment
    assert core.on_event(PartialResult(1, "x")).messages
    assert core.on_event(PartialResult(1, "x")).messages  # unchanged: a steady cadence
    assert core.on_event(PartialResult(1, "")).messages == []  # never empty hypotheses
    assert core.on_event(final(1, "")).messages == []


def test_done_closes_after_catching_up_missing_finals() -> None:
    core = streaming()
    core.on_eos()
    outcome = core.on_event(Done(segments=2, total=4.0))
    assert outcome.catch_up and not outcome.close
    core.on_event(final(0))
    core.on_event(final(1))
    outcome = core.on_event(Done(segments=2, total=4.0))
    assert outcome.close and core.phase is Phase.CLOSED


def test_done_closes_even_if_catch_up_found_nothing() -> None:
    core = streaming()
    assert core.on_event(Done(segments=1, total=1.0)).catch_up
    assert core.on_event(Done(segments=1, total=1.0)).close


def test_failed_event_sends_status_and_closes() -> None:
    outcome = streaming().on_event(Failed(2, "Decoder process failed"))
    assert outcome.close
    assert json.loads(outcome.messages[0]) == {
        "status": 2,
        "message": "Decoder process failed",
        "id": "sid",
    }


def test_client_errors() -> None:
    core = SessionCore("sid")
    with pytest.raises(BadRequest):
        core.on_audio()  # before a worker claimed the session
    core.on_event(Claimed("w1"))
    core.on_audio()
    core.on_eos()
    with pytest.raises(BadRequest, match="after EOS"):
        core.on_audio()
    with pytest.raises(BadRequest, match="twice"):
        core.on_eos()


def test_no_decoder_is_status_9_once() -> None:
    core = SessionCore("sid")
    outcome = core.on_error(NoDecoderAvailable())
    assert json.loads(outcome.messages[0]) == {
        "status": 9,
        "message": "No decoder available, try again later",
        "id": "sid",
    }
    assert core.on_error(NoDecoderAvailable()).messages == []
    assert core.on_event(final(0)).messages == []
