"""The gateway's session core: pure state, no I/O.

It decides what a client is sent for each worker event and when the socket closes:

    connecting --claimed--> streaming --client EOS--> draining --done--> closed
         \\                      \\                         \\
          +--------- failed / bad input / no decoder --------+--> closed

Finals are numbered by the worker; the core sends each segment number once, in order,
and drops partials of segments already final, so a replayed or duplicated event never
reaches the client twice.

:class:`IdleClock` is the idle timeout's pure part: how long a client has sent too
little audio to count, in wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from shared.protocol import (
    BadRequest,
    ResultMessage,
    SessionError,
    Status,
    StatusMessage,
    status_for,
)
from shared.wire import Claimed, Done, Event, Failed, FinalResult, PartialResult, Progress


class Phase(Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass
class Outcome:
    """What to do after an input: messages to send, then whether to close."""

    messages: list[str] = field(default_factory=list)
    close: bool = False
    #: Finals may have been missed: read the results stream, feed its finals through
    #: :meth:`SessionCore.on_event`, then call :meth:`SessionCore.after_catch_up`.
    catch_up: bool = False


class SessionCore:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.phase = Phase.CONNECTING
        self.next_segment = 0
        self.last_partial: tuple[int, str] | None = None
        self.finals: list[FinalResult] = []
        #: the status message that ended the session, if it did not end normally
        self.failure: StatusMessage | None = None
        #: the gateway-side error behind :attr:`failure` (``None`` if the worker failed)
        self.error: SessionError | None = None
        self._caught_up = False

    # --- client side ---------------------------------------------------------------

    def on_audio(self) -> None:
        if self.phase is Phase.DRAINING:
            raise BadRequest("Audio received after EOS")
        if self.phase is not Phase.STREAMING:
            raise BadRequest(f"Audio not accepted while {self.phase.value}")

    def on_eos(self) -> None:
        if self.phase is Phase.DRAINING:
            raise BadRequest("EOS received twice")
        self.on_audio()
        self.phase = Phase.DRAINING

    def on_error(self, exc: SessionError) -> Outcome:
        """The session ends on the gateway's side (bad input, no decoder, timeout)."""
        if self.phase is Phase.CLOSED:
            return Outcome()
        self.phase = Phase.CLOSED
        # Kept without its traceback (and its causes'): their frames hold the session,
        # which holds the exception, a cycle that kept every refused client's unread
        # frames (16 MiB each) until a rare full collection (found by the soak).
        exc.__cause__ = exc.__context__ = None
        self.error = exc.with_traceback(None)
        self.failure = StatusMessage(self.sid, status_for(exc), str(exc))
        return Outcome([self.failure.serialize()], close=True)

    # --- worker side ---------------------------------------------------------------

    def on_event(self, event: Event) -> Outcome:
        if self.phase is Phase.CLOSED:
            return Outcome()
        if isinstance(event, Claimed):
            if self.phase is Phase.CONNECTING:
                self.phase = Phase.STREAMING
                return Outcome()
            # Claimed again: another worker took the session over (or its decoder was
            # replaced). A final published just before the old owner died may never
            # have reached us: read the results stream before going on.
            return Outcome(catch_up=True)
        if isinstance(event, PartialResult):
            return Outcome(self._partial(event))
        if isinstance(event, FinalResult):
            return Outcome(self._final(event))
        if isinstance(event, Failed):
            self.phase = Phase.CLOSED
            status = Status(event.status) if event.status in _CODES else Status.ABORTED
            self.failure = StatusMessage(self.sid, status, event.message)
            return Outcome([self.failure.serialize()], close=True)
        if isinstance(event, Progress):
            return Outcome()  # the runner's business (backpressure), not the client's
        if isinstance(event, Done):
            if self.next_segment < event.segments and not self._caught_up:
                self._caught_up = True
                return Outcome(catch_up=True)
            self.phase = Phase.CLOSED
            return Outcome(close=True)
        raise TypeError(f"unexpected event {event!r}")

    def after_catch_up(self, event: Event) -> Outcome:
        """What to do with the event that asked for a catch-up, now that it is done."""
        return self.on_event(event) if isinstance(event, Done) else Outcome()

    @property
    def transcript(self) -> str:
        """The finals so far, joined by spaces (the HTTP API's ``utterance``)."""
        return " ".join(final.text for final in self.finals)

    def _partial(self, event: PartialResult) -> list[str]:
        if event.segment < self.next_segment or not event.text:
            return []
        self.last_partial = (event.segment, event.text)
        return [ResultMessage(self.sid, event.segment, event.text, final=False).serialize()]

    def _final(self, event: FinalResult) -> list[str]:
        if event.segment < self.next_segment or not event.text:
            return []
        self.next_segment = event.segment + 1
        self.finals.append(event)
        return [event.client_message(self.sid).serialize()]


_CODES = {int(s) for s in Status}


#: Audio (seconds of it, once normalised) a client must send for the idle timeout to
#: start again: two frames of a client streaming quarter seconds, a short word. A
#: trickle of smaller pieces, however often, leaves the timeout running.
MIN_ACTIVE_AUDIO_S = 0.5


class IdleClock:
    """How long a client has gone without sending :data:`MIN_ACTIVE_AUDIO_S` of audio.

    Wall time since the audio received reached the threshold last, not since the
    client last sent a byte: one byte every 59 s does not hold a decoder slot for the
    session's whole maximum duration. Time the gateway spends handling a piece
    (writing it, waiting for room in the backlog) is the gateway's, not the client's,
    and does not count. Times are the caller's (``time.monotonic()``), so this is pure.
    """

    def __init__(self, now: float, threshold_samples: int) -> None:
        self.threshold = max(1, threshold_samples)
        #: when the timeout last started again
        self.since = now
        #: samples and bytes received since then
        self.samples = 0
        self.received = 0
        self._busy_since: float | None = None
        self._restarted = False

    def busy(self, now: float) -> None:
        """The gateway handles a piece from the client: the clock stops."""
        self._busy_since = now
        self._restarted = False

    def heard(self, data_bytes: int, samples: int, now: float) -> None:
        """``data_bytes`` received, making ``samples`` of audio (possibly none yet)."""
        self.received += data_bytes
        self.samples += samples
        if self.samples >= self.threshold:
            self.since, self.samples, self.received = now, 0, 0
            self._restarted = True

    def ready(self, now: float) -> None:
        """The gateway waits for the client again: the clock goes on."""
        if self._busy_since is not None:
            if self._restarted:
                self.since = now
            else:
                self.since += now - self._busy_since
        self._busy_since = None

    def idle(self, now: float) -> float:
        """Seconds of the client's without enough audio (0 while the gateway is busy)."""
        return 0.0 if self._busy_since is not None else now - self.since
