"""Word times in what clients are sent: kaldi-gstreamer-server's ``word-alignment``,
vosk-server's ``result`` entries, the HTTP reply; and the vosk dialect's phrase list."""

from __future__ import annotations

import json

import pytest

from gateway.core import SessionCore
from gateway.vosk import VoskConfig, VoskReplies, parse_message
from shared.protocol import BadGrammar, RecognitionReply, parse_phrases
from shared.wire import (
    WORD_CONFIDENCE,
    Claimed,
    FinalResult,
    parse_event,
    serialize_event,
    word_alignment,
    word_times,
)

WORDS = word_times([("불", 1.2, 1.5), ("켜", 1.5, 1.8004)])


def final(segment: int, text: str, words: list[dict[str, object]] | None) -> FinalResult:
    return FinalResult(segment, text, -1.0, 1.0, 1.0, 2.0, words=words)


def test_word_times_are_rounded_to_milliseconds() -> None:
    assert WORDS == [
        {"word": "불", "start": 1.2, "end": 1.5},
        {"word": "켜", "start": 1.5, "end": 1.8},
    ]


def test_words_cross_the_wire_and_are_left_out_without_times() -> None:
    timed = final(0, "불 켜", WORDS)
    assert parse_event(serialize_event(timed)) == timed
    untimed = final(1, "불 켜", None)
    assert "words" not in json.loads(serialize_event(untimed))  # as before word times
    assert parse_event(serialize_event(untimed)) == untimed


def test_kgs_final_carries_word_alignment_only_with_times() -> None:
    message = json.loads(final(0, "불 켜", WORDS).client_message("sid").serialize())
    hypothesis = message["result"]["hypotheses"][0]
    assert hypothesis["word-alignment"] == [
        {"word": "불", "start": 1.2, "length": 0.3, "confidence": WORD_CONFIDENCE},
        {"word": "켜", "start": 1.5, "length": 0.3, "confidence": WORD_CONFIDENCE},
    ]
    untimed = json.loads(final(0, "불 켜", None).client_message("sid").serialize())
    assert "word-alignment" not in untimed["result"]["hypotheses"][0]
    assert word_alignment(None) is None


def test_http_reply_carries_the_finals_word_alignment() -> None:
    reply = json.loads(RecognitionReply("sid", "불 켜", word_alignment(WORDS)).serialize())
    assert [w["word"] for w in reply["hypotheses"][0]["word-alignment"]] == ["불", "켜"]
    plain = json.loads(RecognitionReply("sid", "").serialize())
    assert plain["hypotheses"] == [{"utterance": ""}]


def _core(*finals: FinalResult) -> SessionCore:
    core = SessionCore("sid")
    core.on_event(Claimed("w"))
    for event in finals:
        core.on_event(event)
    return core


def test_vosk_finals_carry_result_entries_like_vosk_server() -> None:
    core = _core(final(0, "불 켜", WORDS), final(1, "음악", None))
    replies = VoskReplies(core)
    first = json.loads(replies.for_audio())
    assert list(first) == ["result", "text"]  # vosk-server's order
    assert first["text"] == "불 켜"
    assert first["result"][0] == {"conf": 1.0, "end": 1.5, "start": 1.2, "word": "불"}
    assert list(first["result"][0]) == ["conf", "end", "start", "word"]
    assert json.loads(replies.for_audio()) == {"text": "음악"}  # no times: no entries
    # eof joins what is left; only the finals with times add entries
    core.on_event(final(2, "불 켜", WORDS))
    core.on_event(final(3, "음악", None))
    rest = json.loads(replies.rest())
    assert rest["text"] == "불 켜 음악" and [w["word"] for w in rest["result"]] == ["불", "켜"]


def test_vosk_words_off_sends_text_only() -> None:
    core = _core(final(0, "불 켜", WORDS))
    assert json.loads(VoskReplies(core, words=False).for_audio()) == {"text": "불 켜"}


def test_vosk_words_config() -> None:
    assert VoskConfig().words, "on by default, as vosk-server's VOSK_SHOW_WORDS"
    for value, expected in ((0, False), (1, True), (False, False), (True, True)):
        config = parse_message(json.dumps({"config": {"words": value}})).config
        assert config is not None and config.words is expected


def test_vosk_phrase_list_drops_empty_phrases_kgs_refuses_them() -> None:
    assert parse_phrases(["불 켜", "", "  "], lenient=True) == ("불 켜",)
    with pytest.raises(BadGrammar, match="empty phrase"):
        parse_phrases(["불 켜", ""])
    for nothing in ([""], ["[unk]", " "]):
        with pytest.raises(BadGrammar, match="empty"):
            parse_phrases(nothing, lenient=True)
    config = parse_message('{"config": {"phrase_list": ["", "불 켜"]}}').config
    assert config is not None and config.phrase_list == ["", "불 켜"]
