"""Client ⇄ gateway messages in kaldi-gstreamer-server's dialect.

Status codes are the original's. Every message the gateway sends is built here and
carries ``status`` and ``id``; results never carry an empty ``hypotheses`` list.

Exceptions that end a session map to a status through :data:`STATUS_FOR`; the
gateway sends that status with the exception's text, then closes the socket.

    SessionError
    ├── BadRequest          (5: malformed caps, undecodable audio, oversized frame…)
    │   └── UnsupportedAudio    (5: audio in a format the gateway cannot decode)
    ├── NoDecoderAvailable  (9: no free slot within the admission wait)
    └── Aborted             (2: the decoder failed, the session was cancelled)
"""

from __future__ import annotations

import json
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


class NoDecoderAvailable(SessionError):
    def __init__(self, message: str = "No decoder available, try again later") -> None:
        super().__init__(message)


class Aborted(SessionError):
    pass


STATUS_FOR: dict[type[SessionError], Status] = {
    BadRequest: Status.NOT_ALLOWED,
    NoDecoderAvailable: Status.NOT_AVAILABLE,
    Aborted: Status.ABORTED,
}


def status_for(exc: SessionError) -> Status:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return Status.ABORTED


EOS = "EOS"


def _dump(obj: dict[str, Any]) -> str:
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

    def serialize(self) -> str:
        hypothesis: dict[str, Any] = {"transcript": self.transcript}
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
        return _dump(msg)


@dataclass(frozen=True)
class StatusMessage:
    """A status without a result: errors, and "no decoder available"."""

    sid: str
    status: Status
    message: str

    def serialize(self) -> str:
        return _dump({"status": int(self.status), "message": self.message, "id": self.sid})


@dataclass(frozen=True)
class ClusterStatus:
    """What ``/client/ws/status`` sends: the original's two counters, cluster-wide."""

    num_workers_available: int
    num_requests_processed: int

    def serialize(self) -> str:
        return _dump(
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
        return _dump(
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
        return _dump({"status": int(self.status), "message": self.message})


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
        return _dump(self._entry())

    def serialize(self) -> str:
        """One reference as an HTTP reply: the entry plus its ``content-id``."""
        return _dump({"content-id": self.content_id, **self._entry()})

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
    return _dump({r.content_id: r._entry() for r in references})
