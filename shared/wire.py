"""Gateway ⇄ worker messages: stream entries and pub/sub events.

Everything that crosses Redis between the two roles is defined here as a frozen
dataclass with ``serialize()`` and ``parse()``; nothing else builds or reads these
fields. Parsing failures raise :class:`WireError` (a bug or a version skew, never
client input: the gateway validates client input before anything reaches Redis).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
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
    #: Words of :attr:`phrases` the model lacks are dropped (vosk-server's way) instead
    #: of refusing the list; only a list left without a phrase is refused. Absent from
    #: the entry when false (an older worker refuses such a list, as it always did).
    skip_unknown_words: bool = False

    def serialize(self) -> dict[str, str]:
        fields = {"sid": self.sid, "model": self.model, "created": repr(self.created)}
        if self.phrases:
            fields["phrases"] = json.dumps(list(self.phrases), ensure_ascii=False)
            if self.skip_unknown_words:
                fields["skip_unknown_words"] = "1"
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
            sid=_text(fields, "sid"),
            model=_text(fields, "model"),
            created=created,
            phrases=phrases,
            skip_unknown_words=bool(phrases) and fields.get(b"skip_unknown_words") == b"1",
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
    """A finished segment. Times are seconds from the start of the stream.

    ``words`` are the decoder's words with their times, each
    ``{"word": str, "start": float, "end": float}`` in seconds from the start of the
    stream, rounded to the millisecond; ``None`` when there are no times (the model
    has no alignment lexicon, or aligning this segment failed). A post-processor may
    change :attr:`text`; the words stay the decoder's. Left out of the serialized
    event when ``None``, so such a final reads as it did before word times existed.
    """

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
    #: the decoder's words with times (see above); ``None``: no times
    words: list[dict[str, Any]] | None = None

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
            word_alignment=word_alignment(self.words),
        )


#: What a word entry of a client reply says for ``confidence`` / ``conf``:
#: kaldi-active-grammar computes no per-word confidence, and none is invented; every
#: word says 1.0, which means "not computed" (docs/compatibility.md, "Word times").
WORD_CONFIDENCE = 1.0


def word_times(words: Iterable[tuple[str, float, float]]) -> list[dict[str, Any]]:
    """``FinalResult.words`` from (word, start, end) in stream seconds, rounded to ms."""
    return [{"word": w, "start": round(start, 3), "end": round(end, 3)} for w, start, end in words]


def word_alignment(words: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """``words`` as kaldi-gstreamer-server's ``word-alignment`` entries
    (gst-kaldi-nnet2-online's keys: ``word``, ``start``, ``length``, ``confidence``);
    ``start`` in seconds from the start of the stream."""
    if words is None:
        return None
    return [
        {
            "word": w["word"],
            "start": w["start"],
            "length": round(w["end"] - w["start"], 3),
            "confidence": WORD_CONFIDENCE,
        }
        for w in words
    ]


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
    fields = asdict(event)
    if isinstance(event, FinalResult) and event.words is None:
        del fields["words"]  # a final without times reads as before they existed
    return json.dumps({"type": event.type, **fields}, ensure_ascii=False).encode()


def parse_event(data: bytes | str) -> Event:
    """An event; fields this version does not know (a newer worker's) are ignored, so
    a gateway reads the events of the next release during a rolling upgrade."""
    try:
        raw = json.loads(data)
        cls = _EVENT_TYPES[raw.pop("type")]
        known = {f.name for f in dataclass_fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})  # type: ignore[no-any-return]
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
