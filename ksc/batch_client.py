"""The HTTP client of the batch API, for ``ksc transcribe --batch``.

It submits a file (``POST /v1/transcriptions``), polls the job until it has ended, and
turns a finished job into the messages a streaming session would have sent, so one
writer renders both (:func:`ksc.transcribe.render`).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ksc.client import Transcript
from ksc.endpoints import GatewayUrl
from shared.wire import word_alignment


class SubmitError(Exception):
    """The gateway refused an upload: ``code`` is the HTTP status, ``message`` its reason."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"HTTP {code}: {message}")
        self.code = code
        self.message = message


def http_base(url: str) -> str:
    """The gateway's HTTP base for any form of its address (:mod:`ksc.endpoints`):
    ``ws://host:port`` (the CLI's default form) -> ``http://host:port``."""
    return GatewayUrl.parse(url).http()


def _call(request: urllib.request.Request) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            message = str(json.loads(body).get("message", body))
        except ValueError:
            message = body
        raise SubmitError(exc.code, message) from None


def submit(base: str, data: bytes, *, model: str = "") -> str:
    """POST one file; returns the job id (:class:`SubmitError`, or OSError if unreachable)."""
    query = f"?{urllib.parse.urlencode({'model': model})}" if model else ""
    request = urllib.request.Request(
        f"{base}/v1/transcriptions{query}",
        data=data,
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    return str(_call(request)["id"])


def status(base: str, job_id: str) -> dict[str, Any]:
    return _call(urllib.request.Request(f"{base}/v1/transcriptions/{job_id}"))


def wait(base: str, job_id: str, *, interval: float = 0.5) -> dict[str, Any]:
    """Poll until the job has finished or failed; returns its last document."""
    while True:
        doc = status(base, job_id)
        if doc["state"] in ("finished", "failed"):
            return doc
        time.sleep(interval)


def as_transcript(doc: dict[str, Any]) -> Transcript:
    """A finished job's segments as the messages a streaming session would have sent,
    so :func:`ksc.transcribe.render` writes every format from either."""
    result = Transcript()
    for seg in doc.get("segments", []):
        hypothesis: dict[str, Any] = {"transcript": seg["text"], "likelihood": seg["likelihood"]}
        # The decoder's word times, when the job has them, as a live final carries them.
        alignment = word_alignment(seg.get("words"))
        if alignment is not None:
            hypothesis["word-alignment"] = alignment
        result.messages.append(
            {
                "status": 0,
                "id": doc["id"],
                "segment": seg["segment"],
                "result": {"hypotheses": [hypothesis], "final": True},
                "segment-start": seg["start"],
                "segment-length": seg["length"],
                "total-length": doc.get("duration", 0.0),
            }
        )
    return result
