"""The pure parts of the gateway's input bounds: the JSON helper every client message
goes through, and the idle clock. The bounds themselves are crossed by real clients in
``tests/integration/test_bounds.py``."""

from __future__ import annotations

import pytest

from gateway.core import IdleClock
from shared.protocol import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    BadGrammar,
    BadRequest,
    ClientText,
    JsonError,
    parse_json,
    parse_phrases,
    phrases_param,
)


def test_parse_json_within_bounds() -> None:
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(nested) is not None
    # Brackets inside strings, escaped quotes included, are not nesting.
    text = '{"config": {"phrase_list": ["[[[[[[[[[[[[[[[[[[[[", "\\"]]]]", "{{{{{{{{{{{{{{{{{{"]}}'
    assert parse_json(text)["config"]["phrase_list"][1] == '"]]]]'


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested deeper"),
        ("[" * 1_000_000, "larger than"),
        ("[" * 60_000, "nested deeper"),  # past Python's recursion limit
        ('{"a": ' * 5000, "nested deeper"),
        ("[" + "1," * MAX_JSON_BYTES + "1]", "larger than"),
        ('"\\' * 30_000, "not JSON"),
        ("{not json", "not JSON"),
    ],
)
def test_parse_json_refuses(text: str, words: str) -> None:
    with pytest.raises(JsonError, match=words):
        parse_json(text)


def test_every_entry_point_reports_bad_json_as_its_status() -> None:
    with pytest.raises(BadRequest, match="nested deeper"):
        ClientText.parse("[" * 100_000)
    assert ClientText.parse("EOS").eos
    with pytest.raises(BadGrammar, match="nested deeper"):
        parse_phrases(phrases_param("[" * 5000))
    assert parse_phrases(phrases_param('["불 켜"]')) == ("불 켜",)


def test_idle_clock_counts_wall_time_since_enough_audio() -> None:
    clock = IdleClock(now=0.0, threshold_samples=8000)
    for t in range(1, 60):  # a byte every second: never enough
        clock.busy(float(t))
        clock.heard(1, 0, float(t))
        clock.ready(float(t))
    assert clock.idle(60.0) == 60.0 and clock.received == 59
    clock.busy(60.0)
    clock.heard(16000, 8000, 60.0)  # half a second of audio: the timer starts again
    clock.ready(60.0)
    assert clock.idle(61.0) == 1.0 and clock.received == 0


def test_idle_clock_stops_while_the_gateway_is_busy() -> None:
    clock = IdleClock(now=0.0, threshold_samples=8000)
    clock.busy(10.0)  # a tiny piece, then 100 s waiting for room in the backlog
    clock.heard(2, 1, 10.0)
    assert clock.idle(50.0) == 0.0
    clock.ready(110.0)
    assert clock.idle(111.0) == 11.0
