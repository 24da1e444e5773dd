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

Every JSON text a client sends (a text frame, ``?phrases=``) goes through
:func:`parse_json`: bounded in size and nesting, it raises only :class:`JsonError`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from enum import IntEnum
from itertools import accumulate
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
#: words and :data:`MAX_PHRASE_CHARS` characters); a longer one is a bad grammar
#: (status 7). The grammar is one small FST, so the bound is about abuse (a session's
#: grammar is built in its decoder's process), not a limit of Kaldi.
MAX_PHRASES = 1000
MAX_PHRASE_WORDS = 20
MAX_PHRASE_CHARS = 200

#: The largest JSON text a client may send as one message: a vosk text frame (its
#: config and phrase list included) or kaldi-gstreamer-server's ``?phrases=``. A full
#: phrase list (:data:`MAX_PHRASES` phrases of a few words) takes less than half of it.
MAX_JSON_BYTES = 64 * 1024
#: How deeply a client's JSON may nest; every message of both dialects needs 3 levels.
MAX_JSON_DEPTH = 16

#: A JSON string, escapes included, or an unterminated one up to the end of the text;
#: possessive, so the scan is linear whatever the text holds.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_NESTING = {"[": 1, "{": 1, "]": -1, "}": -1}


def _json_depth(text: str, limit: int) -> int:
    """How deeply ``text`` nests (brackets inside strings do not count); linear time."""
    if text.count("[") + text.count("{") <= limit:
        return 0  # cannot be deeper: the common case costs two counts
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_NESTING.__getitem__, brackets)), default=0)


class JsonError(ValueError):
    """A client's JSON text that is not JSON, or not within the bounds of
    :func:`parse_json`; its text says which, for the client."""


def parse_json(
    text: str | bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Every JSON text a client sends, parsed within bounds. Raises :class:`JsonError`.

    The size is checked before anything is parsed and the nesting before ``json``
    recurses into it, so a hostile text costs one linear scan: no ``RecursionError``
    (Python's parser recurses once per level), no deep structure for later code.
    """
    if len(text) > max_bytes or (
        isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        raise JsonError(f"JSON text larger than {max_bytes} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonError("JSON text is not UTF-8") from exc
    if _json_depth(text, max_depth) > max_depth:
        raise JsonError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError as exc:  # not reached after the scan; never a traceback
        raise JsonError(f"JSON nested deeper than {max_depth} levels") from exc
    except ValueError as exc:
        raise JsonError(f"not JSON: {text[:80]!r}") from exc


@dataclass(frozen=True)
class UnreadablePhrases:
    """A ``?phrases=`` parameter :func:`parse_json` refused: :func:`parse_phrases`
    answers it with status 7, like any other bad phrase list."""

    reason: str


def parse_phrases(value: object, *, lenient: bool = False) -> tuple[str, ...]:
    """A client's phrase list, normalised: NFC, words split on whitespace and joined
    by one space, duplicates dropped (first kept). Raises :class:`BadGrammar`.

    ``[unk]`` (vosk's out-of-list marker) is accepted and dropped: the list is closed.
    ``lenient`` (the vosk dialect) drops empty phrases as vosk-server does instead of
    refusing the list; a list left with no phrase is refused either way, and so is one
    over the bounds (they guard the worker, vosk-server has none).
    """
    if isinstance(value, UnreadablePhrases):
        raise BadGrammar(
            f"Bad grammar: the phrase list must be a JSON array of strings ({value.reason})"
        )
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise BadGrammar("Bad grammar: the phrase list must be a JSON array of strings")
    phrases: dict[str, None] = {}
    for raw in value:
        phrase = " ".join(unicodedata.normalize("NFC", raw).split())
        if phrase == "[unk]" or (lenient and not phrase):
            continue
        if not phrase:
            raise BadGrammar("Bad grammar: empty phrase")
        if len(phrase) > MAX_PHRASE_CHARS:
            raise BadGrammar(f"Bad grammar: phrase longer than {MAX_PHRASE_CHARS} characters")
        if len(phrase.split()) > MAX_PHRASE_WORDS:
            raise BadGrammar(f"Bad grammar: phrase longer than {MAX_PHRASE_WORDS} words")
        phrases[phrase] = None
        if len(phrases) > MAX_PHRASES:
            raise BadGrammar(f"Bad grammar: too many phrases, at most {MAX_PHRASES}")
    if not phrases:
        raise BadGrammar("Bad grammar: the phrase list is empty")
    return tuple(phrases)


def phrases_param(text: str) -> object:
    """The ``phrases`` query parameter decoded (a JSON array), for :func:`parse_phrases`;
    text :func:`parse_json` refuses comes back as :class:`UnreadablePhrases`, which
    that then refuses (status 7). Never raises: the session reports it."""
    try:
        return parse_json(text)
    except JsonError as exc:
        return UnreadablePhrases(str(exc))


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
    #: the hypothesis's ``word-alignment`` entries (``word``, ``start``, ``length``,
    #: ``confidence``), left out when ``None``: the final has no word times
    word_alignment: list[dict[str, Any]] | None = None

    def serialize(self) -> str:
        if self.processed is not None:
            return to_json({**self.processed, "segment": self.segment, "id": self.sid})
        hypothesis: dict[str, Any] = {"transcript": self.transcript}
        if self.original_transcript:
            hypothesis["original-transcript"] = self.original_transcript
        if self.likelihood is not None:
            hypothesis["likelihood"] = self.likelihood
        if self.word_alignment:
            hypothesis["word-alignment"] = self.word_alignment
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


#: The largest JSON text frame of kaldi-gstreamer-server's dialect (an
#: ``adaptation_state`` message: accepted, not applied; the original's are a few KiB).
MAX_CLIENT_TEXT_BYTES = 1024 * 1024


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
            obj = parse_json(text, max_bytes=MAX_CLIENT_TEXT_BYTES)
        except JsonError as exc:
            raise BadRequest(f"Unsupported text message: {exc}") from exc
        if isinstance(obj, dict) and "adaptation_state" in obj:
            # kaldi-active-grammar cannot import adaptation state: accepted, not applied.
            return cls(eos=False, adaptation_state=True)
        raise BadRequest(f"Unsupported text message: {text[:80]!r}")


# --- HTTP: /client/dynamic/recognize and /client/dynamic/reference ---------------------


@dataclass(frozen=True)
class RecognitionReply:
    """The answer to an HTTP recognition request: the finals joined by spaces.

    ``word_alignment`` (added): the finals' ``word-alignment`` entries in order, times
    from the start of the audio; left out when no final has word times."""

    sid: str
    utterance: str
    word_alignment: list[dict[str, Any]] | None = None

    def serialize(self) -> str:
        hypothesis: dict[str, Any] = {"utterance": self.utterance}
        if self.word_alignment:
            hypothesis["word-alignment"] = self.word_alignment
        return to_json(
            {
                "status": int(Status.SUCCESS),
                "id": self.sid,
                "hypotheses": [hypothesis],
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
