"""Client ⇄ gateway messages in kaldi-gstreamer-server's dialect.

Status codes are the original's. Every message the gateway sends is built here and
carries ``status`` and ``id``; results never carry an empty ``hypotheses`` list.

Exceptions that end a session map to a status through :data:`STATUS_FOR`; the
gateway sends that status with the exception's text, then closes the socket.

    SessionError
    ├── BadRequest          (5: malformed caps, undecodable audio, oversized frame…)
    │   └── UnsupportedAudio    (5: audio in a format the gateway cannot decode)
    ├── BadGrammar          (7: a phrase list that is not a list of phrases, or too long)
    ├── NoDecoderAvailable  (9: no free slot within the admission wait)
    ├── LimitExceeded       (6: the API key's concurrent-session or audio quota is used up)
    ├── Aborted             (2: the decoder failed, the session was cancelled)
    └── UnknownModel        (8: ``?model=`` names a model not on the allow-list)
        ├── TimedOut            (2: idle client, or the maximum session duration)
        └── FellBehind          (2: the decoder fell too far behind real time)
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class Status(IntEnum):
    """kaldi-gstreamer-server's status codes (``common.py`` of the original)."""

    SUCCESS = 0
    NO_SPEECH = 1
    ABORTED = 2
    AUDIO_CAPTURE = 3
    NETWORK = 4
    NOT_ALLOWED = 5
    SERVICE_NOT_ALLOWED = 6
    BAD_GRAMMAR = 7
    LANGUAGE_NOT_SUPPORTED = 8
    NOT_AVAILABLE = 9


class SessionError(Exception):
    """Ends a session with a status message."""


class BadRequest(SessionError):
    pass


class UnsupportedAudio(BadRequest):
    """The request was well formed but its audio cannot be decoded: an unknown or
    broken container, a codec or sample format the gateway does not read, a stream
    that ended inside its header. HTTP answers it with 415, other bad requests with 400.
    """


class BadGrammar(SessionError):
    """A phrase list that cannot be a grammar (the worker also sends status 7 for a
    phrase with a word the model does not know)."""


class NoDecoderAvailable(SessionError):
    def __init__(self, message: str = "No decoder available, try again later") -> None:
        super().__init__(message)


class Aborted(SessionError):
    pass


class UnknownModel(SessionError):
    """The client asked for a model id that is not on the allow-list (status 8)."""


class TimedOut(Aborted):
    """The client sent nothing for the idle timeout, or the session ran past its
    maximum duration. HTTP answers it with 408."""


class FellBehind(Aborted):
    """The session's decoder fell further behind real time than allowed: the cluster
    is overloaded. HTTP answers it with 503 and ``Retry-After``."""


class LimitExceeded(SessionError):
    """A per-key limit (concurrent sessions, audio seconds per period) is used up.

    Status 6 (``SERVICE_NOT_ALLOWED``) rather than 9: the cluster may have free slots,
    this client may not use them now. HTTP answers it with 429 and ``Retry-After``.
    """

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


STATUS_FOR: dict[type[SessionError], Status] = {
    BadRequest: Status.NOT_ALLOWED,
    BadGrammar: Status.BAD_GRAMMAR,
    NoDecoderAvailable: Status.NOT_AVAILABLE,
    LimitExceeded: Status.SERVICE_NOT_ALLOWED,
    Aborted: Status.ABORTED,
    UnknownModel: Status.LANGUAGE_NOT_SUPPORTED,
}


def status_for(exc: SessionError) -> Status:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return Status.ABORTED


EOS = "EOS"

#: A phrase list may hold this many phrases (each of at most :data:`MAX_PHRASE_WORDS`
#: words); a longer one is a bad grammar (status 7). The grammar is one small FST, so
#: the bound is about abuse (a session's grammar is built in its decoder's process),
#: not a limit of Kaldi.
MAX_PHRASES = 1000
MAX_PHRASE_WORDS = 20


def parse_phrases(value: object) -> tuple[str, ...]:
    """A client's phrase list, normalised: NFC, words split on whitespace and joined
    by one space, duplicates dropped (first kept). Raises :class:`BadGrammar`.

    ``[unk]`` (vosk's out-of-list marker) is accepted and dropped: the list is closed.
    """
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise BadGrammar("Bad grammar: the phrase list must be a JSON array of strings")
    phrases: dict[str, None] = {}
    for raw in value:
        phrase = " ".join(unicodedata.normalize("NFC", raw).split())
        if phrase == "[unk]":
            continue
        if not phrase:
            raise BadGrammar("Bad grammar: empty phrase")
        if len(phrase.split()) > MAX_PHRASE_WORDS:
            raise BadGrammar(f"Bad grammar: phrase longer than {MAX_PHRASE_WORDS} words")
        phrases[phrase] = None
    if not phrases:
        raise BadGrammar("Bad grammar: the phrase list is empty")
    if len(phrases) > MAX_PHRASES:
        raise BadGrammar(f"Bad grammar: {len(phrases)} phrases, at most {MAX_PHRASES}")
    return tuple(phrases)


def phrases_param(text: str) -> object:
    """The ``phrases`` query parameter decoded (a JSON array), for :func:`parse_phrases`;
    text that is not JSON is returned as is, which that then refuses."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def to_json(obj: Any) -> str:
    """Every JSON text the service sends: UTF-8 as it is, not ``\\u`` escapes."""
    return json.dumps(obj, ensure_ascii=False)


@dataclass(frozen=True)
class ResultMessage:
    """A partial or final hypothesis for one segment."""

    sid: str
    segment: int
    transcript: str
    final: bool
    likelihood: float | None = None
    segment_start: float | None = None
    segment_length: float | None = None
    total_length: float | None = None
    #: the transcript before the line post-processor (``original-transcript``)
    original_transcript: str = ""
    #: a full post-processor's message: sent as it is, with our ``id`` and ``segment``
    processed: dict[str, Any] | None = None

    def serialize(self) -> str:
        if self.processed is not None:
            return to_json({**self.processed, "segment": self.segment, "id": self.sid})
        hypothesis: dict[str, Any] = {"transcript": self.transcript}
        if self.original_transcript:
            hypothesis["original-transcript"] = self.original_transcript
        if self.likelihood is not None:
            hypothesis["likelihood"] = self.likelihood
        msg: dict[str, Any] = {
            "status": int(Status.SUCCESS),
            "segment": self.segment,
            "result": {"hypotheses": [hypothesis], "final": self.final},
            "id": self.sid,
        }
        if self.final:
            msg["segment-start"] = self.segment_start
            msg["segment-length"] = self.segment_length
            msg["total-length"] = self.total_length
        return to_json(msg)


@dataclass(frozen=True)
class StatusMessage:
    """A status without a result: errors, and "no decoder available"."""

    sid: str
    status: Status
    message: str

    def serialize(self) -> str:
        return to_json({"status": int(self.status), "message": self.message, "id": self.sid})


@dataclass(frozen=True)
class QueuePosition:
    """While a session waits for a decoder slot (``--queue-messages``):
    ``{"status": 0, "id": …, "queue": {"position": N}}``, N = 1 for the next session a
    worker takes. kaldi-gstreamer-server's ``client.py`` reads a status-0 message only
    for its ``result`` (and ``adaptation_state``), so it ignores this one."""

    sid: str
    position: int

    def serialize(self) -> str:
        return to_json(
            {"status": int(Status.SUCCESS), "id": self.sid, "queue": {"position": self.position}}
        )


@dataclass(frozen=True)
class ClusterStatus:
    """What ``/client/ws/status`` sends: the original's two counters, cluster-wide."""

    num_workers_available: int
    num_requests_processed: int

    def serialize(self) -> str:
        return to_json(
            {
                "num_workers_available": self.num_workers_available,
                "num_requests_processed": self.num_requests_processed,
            }
        )


@dataclass(frozen=True)
class ClientText:
    """A text frame from the client: ``EOS`` ends the audio; JSON may carry options."""

    eos: bool
    adaptation_state: bool = False

    @classmethod
    def parse(cls, text: str) -> ClientText:
        if text.strip() == EOS:
            return cls(eos=True)
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise BadRequest(f"Unsupported text message: {text[:80]!r}") from exc
        if isinstance(obj, dict) and "adaptation_state" in obj:
            # kaldi-active-grammar cannot import adaptation state: accepted, not applied.
            return cls(eos=False, adaptation_state=True)
        raise BadRequest(f"Unsupported text message: {text[:80]!r}")


# --- HTTP: /client/dynamic/recognize and /client/dynamic/reference ---------------------


@dataclass(frozen=True)
class RecognitionReply:
    """The answer to an HTTP recognition request: the finals joined by spaces."""

    sid: str
    utterance: str

    def serialize(self) -> str:
        return to_json(
            {
                "status": int(Status.SUCCESS),
                "id": self.sid,
                "hypotheses": [{"utterance": self.utterance}],
            }
        )


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP error that belongs to no session (a reference request, a preflight)."""

    status: Status
    message: str

    def serialize(self) -> str:
        return to_json({"status": int(self.status), "message": self.message})


@dataclass(frozen=True)
class Reference:
    """A reference transcript for a content id, as kaldi-gstreamer-server keeps it.

    The stored value is the original's ``reference-content.json`` entry:
    ``{"content": …, "user_id": …, "time": "YYYY-MM-DDTHH:MM:SS"}``.
    """

    content_id: str
    content: str
    user_id: str = ""
    time: str = ""

    def value(self) -> str:
        """The entry without its id: what a Redis hash field holds."""
        return to_json(self._entry())

    def serialize(self) -> str:
        """One reference as an HTTP reply: the entry plus its ``content-id``."""
        return to_json({"content-id": self.content_id, **self._entry()})

    def _entry(self) -> dict[str, str]:
        return {"content": self.content, "user_id": self.user_id, "time": self.time}

    @classmethod
    def parse(cls, content_id: str, value: str | bytes) -> Reference:
        try:
            obj = json.loads(value)
            return cls(
                content_id=content_id,
                content=str(obj["content"]),
                user_id=str(obj.get("user_id", "")),
                time=str(obj.get("time", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"bad reference entry for {content_id!r}") from exc


def serialize_references(references: list[Reference]) -> str:
    """Every reference, keyed by content id: the shape of the original's JSON file."""
    return to_json({r.content_id: r._entry() for r in references})
