"""Post-processors: kaldi-gstreamer-server's two hooks on results, with its protocols.

Both are long-lived shell commands started once per worker (as the original starts
them once per worker process) and shared by the worker's sessions.

**Line post-processor** (``post-processor``): one transcript per line on its stdin,
one processed line back on its stdout (a literal ``\\n`` in the answer becomes a
newline). Partials do not wait: while the processor is busy (another session's
text is in it) a partial is skipped, as in the original. Finals wait their turn; the
processed final keeps the decoder's text as ``original-transcript``.

**Full post-processor** (``full-post-processor``): a final's whole client message as
JSON on one line followed by an empty line; it answers with JSON followed by an empty
line (or by closing its stdout). Its answer goes to the client in place of the
message, with our ``id`` and ``segment``. It must keep a non-empty ``hypotheses``
list, or the answer is not used.

Faults: every exchange has a deadline (``post_processor_timeout``). A processor that
misses it, exits, or answers something unreadable is killed and started again, and the
result goes out unprocessed — a broken hook never stalls a session for longer than
the deadline, nor takes the worker down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from contextlib import suppress
from dataclasses import replace
from typing import Any

from shared.wire import FinalResult

__all__ = ["FullProcessor", "LineProcessor", "PostProcessors", "ProcessorFailed"]

log = logging.getLogger(__name__)
#: How long a processor may take to exit after its stdin closed.
_EXIT_GRACE_S = 1.0


class ProcessorFailed(Exception):
    """The processor timed out, exited or answered something unusable."""


class _Command:
    """A shell command with pipes, started lazily and restarted after any fault."""

    def __init__(self, command: str, name: str, timeout: float) -> None:
        self.command = command
        self.name = name
        self.timeout = timeout
        self.lock = asyncio.Lock()
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None

    async def _process(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_shell(
                self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,  # a signal to the worker's group does not reach it
            )
            log.info("%s started (pid %d): %s", self.name, self._proc.pid, self.command)
        return self._proc

    async def exchange(self, data: bytes, read: Any) -> Any:
        """Write ``data``, then ``await read(stdout)``, all within the timeout.

        Call with :attr:`lock` held. Any fault kills the process (the next call
        starts a new one) and raises :class:`ProcessorFailed`.
        """
        try:
            async with asyncio.timeout(self.timeout):
                proc = await self._process()
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(data)
                await proc.stdin.drain()
                return await read(proc.stdout)
        except (TimeoutError, OSError, ValueError, EOFError, asyncio.IncompleteReadError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else f"failed ({exc!r})"
            log.warning("%s %s; restarting it", self.name, why)
            await self.kill()
            self.restarts += 1
            raise ProcessorFailed(f"{self.name} {why}") from exc

    async def kill(self) -> None:
        """Kill its whole process group: the shell and whatever it started, which
        would otherwise keep the pipes (and asyncio's ``wait``) open."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with suppress(TimeoutError):
            async with asyncio.timeout(_EXIT_GRACE_S):
                await proc.wait()

    async def close(self) -> None:
        """Close its stdin and let it exit; kill it if it does not."""
        proc = self._proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            proc.stdin.close()
            with suppress(TimeoutError):
                async with asyncio.timeout(_EXIT_GRACE_S):
                    await proc.wait()
        await self.kill()


async def _read_line(stdout: asyncio.StreamReader) -> str:
    raw = await stdout.readline()
    if not raw.endswith(b"\n"):
        raise EOFError("the processor closed its output")
    return raw.decode("utf-8").strip().replace("\\n", "\n")


async def _read_json(stdout: asyncio.StreamReader) -> Any:
    lines = []
    while True:
        raw = await stdout.readline()
        if not raw.strip():  # an empty line ends the answer, and so does EOF
            break
        lines.append(raw)
    if not lines:
        raise EOFError("the processor answered nothing")
    return json.loads(b"".join(lines).decode("utf-8"))


def _has_hypotheses(answer: Any) -> bool:
    """Whether ``answer`` keeps ``result.hypotheses`` as a non-empty list of transcripts."""
    result = answer.get("result") if isinstance(answer, dict) else None
    hypotheses = result.get("hypotheses") if isinstance(result, dict) else None
    return (
        isinstance(hypotheses, list)
        and bool(hypotheses)
        and all(isinstance(h, dict) and isinstance(h.get("transcript"), str) for h in hypotheses)
    )


class LineProcessor:
    """One transcript in, one line out (kaldi-gstreamer-server's ``post-processor``)."""

    def __init__(self, command: str, timeout: float) -> None:
        self._cmd = _Command(command, "post-processor", timeout)

    @property
    def restarts(self) -> int:
        return self._cmd.restarts

    async def process(self, text: str, *, wait: bool) -> str:
        """The processed text. ``wait=False`` (partials) raises :class:`ProcessorFailed`
        at once when the processor is busy; finals wait, within the timeout."""
        line = " ".join(text.split()) + "\n"
        if not wait and self._cmd.lock.locked():
            raise ProcessorFailed("post-processor busy")
        try:
            async with asyncio.timeout(self._cmd.timeout):
                await self._cmd.lock.acquire()
        except TimeoutError:
            raise ProcessorFailed("post-processor busy for too long") from None
        try:
            return str(await self._cmd.exchange(line.encode("utf-8"), _read_line))
        finally:
            self._cmd.lock.release()

    async def close(self) -> None:
        await self._cmd.close()


class FullProcessor:
    """A final's JSON in, JSON out (kaldi-gstreamer-server's ``full-post-processor``)."""

    def __init__(self, command: str, timeout: float) -> None:
        self._cmd = _Command(command, "full-post-processor", timeout)

    @property
    def restarts(self) -> int:
        return self._cmd.restarts

    async def process(self, message: dict[str, Any]) -> dict[str, Any]:
        data = (json.dumps(message, ensure_ascii=False) + "\n\n").encode("utf-8")
        try:
            async with asyncio.timeout(self._cmd.timeout):
                await self._cmd.lock.acquire()
        except TimeoutError:
            raise ProcessorFailed("full-post-processor busy for too long") from None
        try:
            answer = await self._cmd.exchange(data, _read_json)
        finally:
            self._cmd.lock.release()
        if not _has_hypotheses(answer):
            raise ProcessorFailed("full-post-processor answer lacks result.hypotheses")
        return dict(answer)

    async def close(self) -> None:
        await self._cmd.close()


class PostProcessors:
    """The worker's post-processors; each session's results pass through here."""

    def __init__(self, line: str = "", full: str = "", timeout: float = 5.0) -> None:
        self.line = LineProcessor(line, timeout) if line else None
        self.full = FullProcessor(full, timeout) if full else None

    async def partial(self, text: str) -> str | None:
        """The partial to publish, or ``None`` to skip it (the processor is busy or broke)."""
        if self.line is None:
            return text
        try:
            return await self.line.process(text, wait=False)
        except ProcessorFailed:
            return None

    async def final(self, final: FinalResult, sid: str) -> FinalResult:
        """The final to store and publish: processed if the processors manage, else as is."""
        if self.full is not None:
            message = final.client_message(sid).serialize()
            try:
                answer = await self.full.process(json.loads(message))
            except ProcessorFailed as exc:
                log.warning("[%s] final %d sent unprocessed: %s", sid, final.segment, exc)
                return final
            # The text keeps segment numbering honest (an empty final is never sent).
            text = answer["result"]["hypotheses"][0]["transcript"] or final.text
            return replace(final, text=text, processed=answer)
        if self.line is not None:
            try:
                text = await self.line.process(final.text, wait=True)
            except ProcessorFailed as exc:
                log.warning("[%s] final %d sent unprocessed: %s", sid, final.segment, exc)
                return final
            if not text:
                log.warning("[%s] final %d: post-processor answered nothing", sid, final.segment)
                return final
            return replace(final, text=text, original=final.text)
        return final

    async def close(self) -> None:
        if self.line is not None:
            await self.line.close()
        if self.full is not None:
            await self.full.close()
