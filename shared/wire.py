"""Gateway ⇄ worker messages: stream entries and pub/sub events.

Everything that crosses Redis between the two roles is defined here as a frozen
dataclass with ``serialize()`` and ``parse()``; nothing else builds or reads these
fields. Parsing failures raise :class:`WireError` (a bug or a version skew, never
client input: the gateway validates client input before anything reaches Redis).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from shared.protocol import ResultMessage


class WireError(ValueError):
    """A Redis entry or event that does not match this module's shapes."""


def _text(fields: Mapping[bytes, bytes], name: str) -> str:
    try:
        return fields[name.encode()].decode()
    except (KeyError, UnicodeDecodeError) as exc:
        raise WireError(f"entry lacks text field {name!r}") from exc


# --- the sessions stream --------------------------------------------------------------


@dataclass(frozen=True)
class SessionRequest:
    """One entry of ``sessions:<model>``: a session waiting for a decoder slot."""

    sid: str
    model: str
    created: float
    #: Restrict recognition to these phrases (normalised by the gateway); empty means
    #: dictation. Absent from the entry when empty, so older workers read it unchanged.
    phrases: tuple[str, ...] = ()

    def serialize(self) -> dict[str, str]:
        fields = {"sid": self.sid, "model": self.model, "created": repr(self.created)}
        if self.phrases:
            fields["phrases"] = json.dumps(list(self.phrases), ensure_ascii=False)
        return fields

    @classmethod
    def parse(cls, fields: Mapping[bytes, bytes]) -> SessionRequest:
        try:
            created = float(_text(fields, "created"))
        except ValueError as exc:
            raise WireError("bad created time") from exc
        phrases: tuple[str, ...] = ()
        if b"phrases" in fields:
            try:
                raw = json.loads(_text(fields, "phrases"))
            except ValueError as exc:
                raise WireError("bad phrases field") from exc
            if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
                raise WireError("bad phrases field")
            phrases = tuple(raw)
        return cls(
            sid=_text(fields, "sid"), model=_text(fields, "model"), created=created, phrases=phrases
        )


# --- a session's audio stream ---------------------------------------------------------


@dataclass(frozen=True)
class AudioChunk:
    """Normalised PCM: s16le, mono, at the model's sample rate."""

    pcm: bytes

    def serialize(self) -> dict[str, bytes]:
        return {"pcm": self.pcm}


@dataclass(frozen=True)
class EndOfStream:
    """The client finished sending audio (``EOS``)."""

    def serialize(self) -> dict[str, str]:
        return {"eos": "1"}


@dataclass(frozen=True)
class Abort:
    """The session ends without a last final: the client vanished or sent bad input."""

    reason: str

    def serialize(self) -> dict[str, str]:
        return {"abort": self.reason}


AudioEntry = AudioChunk | EndOfStream | Abort


def parse_audio_entry(fields: Mapping[bytes, bytes]) -> AudioEntry:
    if b"pcm" in fields:
        return AudioChunk(fields[b"pcm"])
    if b"eos" in fields:
        return EndOfStream()
    if b"abort" in fields:
        return Abort(_text(fields, "abort"))
    raise WireError(f"unknown audio entry with fields {sorted(fields)!r}")


# --- events: worker -> gateway over pub/sub (finals also in the results stream) -------


@dataclass(frozen=True)
class Claimed:
    """A worker took the session; audio can flow."""

    type: ClassVar[str] = "claimed"
    worker: str


@dataclass(frozen=True)
class PartialResult:
    type: ClassVar[str] = "partial"
    segment: int
    text: str


@dataclass(frozen=True)
class FinalResult:
    """A finished segment. Times are seconds from the start of the stream."""

    type: ClassVar[str] = "final"
    segment: int
    text: str
    likelihood: float
    start: float
    length: float
    total: float
    #: the transcript before the line post-processor ran ("" when none did)
    original: str = ""
    #: the client message as the full post-processor returned it (``None``: none ran)
    processed: dict[str, Any] | None = None

    def client_message(self, sid: str) -> ResultMessage:
        """What a kaldi-gstreamer-server client is sent for this final."""
        return ResultMessage(
            sid,
            self.segment,
            self.text,
            final=True,
            likelihood=self.likelihood,
            segment_start=self.start,
            segment_length=self.length,
            total_length=self.total,
            original_transcript=self.original,
            processed=self.processed,
        )


@dataclass(frozen=True)
class Failed:
    """The session ended abnormally; ``status`` is a client status code."""

    type: ClassVar[str] = "failed"
    status: int
    message: str


@dataclass(frozen=True)
class Done:
    """The last event of a session that ended normally: every final was published."""

    type: ClassVar[str] = "done"
    segments: int
    total: float


@dataclass(frozen=True)
class Progress:
    """How far the decoder has got: ``samples`` (absolute, from the start of the stream)
    handed to the session's decoder process. Published every second of audio or so; the
    gateway ends a session whose decoder falls too far behind real time with it, and
    holds back a client that sends faster than the decoder reads."""

    type: ClassVar[str] = "progress"
    samples: int


Event = Claimed | PartialResult | FinalResult | Failed | Done | Progress
_EVENT_TYPES: dict[str, type[Any]] = {
    cls.type: cls for cls in (Claimed, PartialResult, FinalResult, Failed, Done, Progress)
}


def serialize_event(event: Event) -> bytes:
    return json.dumps({"type": event.type, **asdict(event)}, ensure_ascii=False).encode()


def parse_event(data: bytes | str) -> Event:
    try:
        raw = json.loads(data)
        cls = _EVENT_TYPES[raw.pop("type")]
        return cls(**raw)  # type: ignore[no-any-return]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WireError(f"bad event {data!r:.200}") from exc


def final_fields(final: FinalResult) -> dict[str, bytes]:
    """A final as a results-stream entry (the durable copy of the pub/sub event)."""
    return {"event": serialize_event(final)}


def parse_final_fields(fields: Mapping[bytes, bytes]) -> FinalResult:
    event = parse_event(fields.get(b"event", b""))
    if not isinstance(event, FinalResult):
        raise WireError("results entry is not a final")
    return event
