"""Wire shapes between gateway and worker, client texts, settings and key names."""

from __future__ import annotations

import argparse

import pytest

from shared import config
from shared.config import GatewaySettings, WorkerSettings
from shared.keys import Keys
from shared.protocol import BadRequest, ClientText
from shared.wire import (
    Abort,
    AudioChunk,
    Claimed,
    Done,
    EndOfStream,
    Failed,
    FinalResult,
    PartialResult,
    SessionRequest,
    WireError,
    final_fields,
    parse_audio_entry,
    parse_event,
    parse_final_fields,
    serialize_event,
)


def as_redis(fields: dict) -> dict[bytes, bytes]:  # type: ignore[type-arg]
    """What redis-py hands back: bytes keys and values."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


@pytest.mark.parametrize(
    "event",
    [
        Claimed("w1"),
        PartialResult(3, "안녕"),
        FinalResult(1, "네", -2.5, 0.5, 1.25, 3.0),
        Failed(5, "bad"),
        Done(2, 7.5),
    ],
)
def test_events_round_trip(event: object) -> None:
    assert parse_event(serialize_event(event)) == event  # type: ignore[arg-type]


def test_final_round_trips_through_the_results_stream() -> None:
    fin = FinalResult(0, "텍스트", 1.0, 0.0, 1.0, 1.0)
    assert parse_final_fields(as_redis(final_fields(fin))) == fin


def test_a_newer_peers_extra_fields_are_ignored() -> None:
    """A gateway reads the events of a worker one release newer (rolling upgrades)."""
    event = parse_event(b'{"type": "partial", "segment": 2, "text": "x", "colour": "red"}')
    assert event == PartialResult(2, "x")


@pytest.mark.parametrize("raw", [b"", b"{}", b'{"type":"nope"}', b'{"type":"done"}', b"[1]"])
def test_bad_events_raise_wire_error(raw: bytes) -> None:
    with pytest.raises(WireError):
        parse_event(raw)


def test_audio_entries() -> None:
    for entry in (AudioChunk(b"\x01\x02"), EndOfStream(), Abort("client disconnected")):
        assert parse_audio_entry(as_redis(entry.serialize())) == entry
    with pytest.raises(WireError):
        parse_audio_entry({b"what": b"ever"})


def test_session_request() -> None:
    req = SessionRequest("abc", "ko", 1700000000.25)
    assert SessionRequest.parse(as_redis(req.serialize())) == req
    with pytest.raises(WireError):
        SessionRequest.parse({b"sid": b"x"})


@pytest.mark.parametrize("text", ["EOS", " EOS\n"])
def test_eos(text: str) -> None:
    assert ClientText.parse(text).eos


def test_adaptation_state_is_accepted_not_applied() -> None:
    msg = ClientText.parse('{"adaptation_state": {"type": "string+gzip+base64", "value": ""}}')
    assert not msg.eos and msg.adaptation_state


@pytest.mark.parametrize("text", ["eos", "{garbage", "[]", '{"other": 1}', ""])
def test_other_text_is_a_bad_request(text: str) -> None:
    with pytest.raises(BadRequest):
        ClientText.parse(text)


def test_keys_share_a_hash_tag_per_session() -> None:
    keys = Keys("p")
    tags = {
        k[k.index("{") : k.index("}") + 1] for k in (*keys.session_keys("s1"), keys.events("s1"))
    }
    assert tags == {"{s1}"}
    assert keys.sid_from_events(keys.events("s1")) == "s1"
    with pytest.raises(ValueError):
        keys.sid_from_events("p:sessions:ko")


def parse(cls: type, argv: list[str], env: dict[str, str]) -> object:
    p = argparse.ArgumentParser()
    config.add_arguments(p, cls)
    return config.build(cls, p.parse_args(argv), env)


def test_flags_beat_environment_beats_defaults() -> None:
    s = parse(
        GatewaySettings, ["--port", "9000"], {"KSC_PORT": "7000", "KSC_ADMISSION_WAIT": "2.5"}
    )
    assert isinstance(s, GatewaySettings)
    assert s.port == 9000 and s.admission_wait == 2.5 and s.model == "ko"
    w = parse(WorkerSettings, [], {"KSC_SLOTS": "3"})
    assert isinstance(w, WorkerSettings) and w.slots == 3


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("FALSE", False), ("0", False), ("on", True)]
)
def test_booleans_are_parsed_explicitly(text: str, value: bool) -> None:
    assert config.parse_bool(text) is value


def test_bad_environment_value_is_reported() -> None:
    with pytest.raises(SystemExit, match="KSC_PORT"):
        parse(GatewaySettings, [], {"KSC_PORT": "eighty"})
    with pytest.raises(ValueError):
        config.parse_bool("maybe")
