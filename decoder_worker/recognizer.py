"""Engine + endpointer = numbered partial and final results for one audio stream.

Pure logic over the :class:`~decoder_worker.engine.Engine` protocol: no I/O, no Kaldi
import. The worker feeds it the session's audio and forwards the events; tests drive
it with a fake engine.

Only audio inside speech segments reaches the engine. Besides saving CPU in silence,
it measured slightly better than decoding the gaps too (docs/engine.md).

Decoder epochs: an epoch ends with the first segment that ends :data:`EPOCH_S` seconds
of audio or more after the epoch's first segment began; the next segment opens a new
epoch, and the engine's decoding state is renewed then
(:class:`~decoder_worker.engine.Renewable`). What an
epoch decodes depends on its own audio alone, so :attr:`Recognizer.replay_point` — the
start of the current epoch — is where a replacement restarts to reproduce everything
that follows exactly. Longer epochs keep the decoder warm longer (less CPU) and make a
replay after failover longer; 30 s keeps a replay to a few CPU seconds.

Segment numbers count emitted finals only: a segment that decodes to nothing (a cough
the VAD took for speech) produces no final and leaves no hole in the numbering, which
kaldi-gstreamer-server clients rely on. Partials carry the number the open segment
will get if it produces a final.
"""

from __future__ import annotations

from dataclasses import dataclass

from decoder_worker.endpoint import (
    DEFAULT_ENDPOINTER,
    Endpointer,
    EndpointerConfig,
    SpeechEnd,
    SpeechStart,
)
from decoder_worker.engine import Engine, Renewable, WordTime
from decoder_worker.model import EndpointRules

__all__ = ["EPOCH_S", "Event", "Final", "Partial", "Recognizer", "decode_pcm"]

#: Seconds of audio after which the decoder's state is renewed at the next segment end.
EPOCH_S = 30.0


@dataclass(frozen=True)
class Partial:
    """Best-path text of the open segment so far."""

    segment: int
    text: str


@dataclass(frozen=True)
class Final:
    """A finished segment. Times in seconds from the start of the stream."""

    segment: int
    text: str
    likelihood: float
    start: float
    length: float
    total: float
    #: the words with their times, from the start of the stream too (``None``: no times)
    words: tuple[WordTime, ...] | None = None
    #: aligning the words failed (the final goes out without times)
    align_failed: bool = False


Event = Partial | Final


class Recognizer:
    """Segments a stream and decodes each segment with one engine."""

    def __init__(
        self,
        engine: Engine,
        rules: EndpointRules,
        *,
        partial_interval: float = 0.25,
        first_segment: int = 0,
        offset_samples: int = 0,
        endpointer: EndpointerConfig = DEFAULT_ENDPOINTER,
        epoch_s: float = EPOCH_S,
    ) -> None:
        self._engine = engine
        self._rate = engine.sample_rate
        self._endpointer = Endpointer(rules, self._rate, endpointer, offset_samples=offset_samples)
        self._partial_samples = partial_interval * self._rate
        self._next_segment = first_segment
        self._carry = b""
        # Audio not yet given to the engine, from absolute sample _buf_start on.
        self._buf = bytearray()
        self._buf_start = offset_samples
        self._received = offset_samples
        self._seg_start: int | None = None
        self._fed = 0  # absolute sample up to which the open segment was fed
        #: absolute sample of the first audio the engine got for the open segment:
        #: where its word times count from
        self._origin: int | None = None
        self._since_partial = 0
        self._epoch_samples = epoch_s * self._rate
        #: (first sample, first segment number) of the current decoder epoch
        self._epoch: tuple[int, int] | None = None
        self._engine_used = False  # whether the engine decoded since it was renewed

    @property
    def replay_point(self) -> tuple[int, int]:
        """Where a replay after failover must restart to reproduce what comes next, and
        the number of the segment that starts there: (absolute sample, segment).

        The start of the current decoder epoch (its first segment); with none open,
        the earliest sample a segment not yet detected could start at (its pre-roll may
        reach back a little), at most a fraction of a second before the current
        position.
        """
        if self._epoch is not None:
            return self._epoch
        return self._endpointer.earliest_next_start, self._next_segment

    @property
    def samples_received(self) -> int:
        """Absolute number of samples received, ``offset_samples`` included."""
        return self._received

    @property
    def samples_without_speech(self) -> int:
        """Samples received since speech was last heard (a segment was open)."""
        return self._endpointer.samples_without_speech

    @property
    def next_segment(self) -> int:
        """The number the next final will carry."""
        return self._next_segment

    def feed(self, pcm: bytes) -> list[Event]:
        """Consume s16le mono PCM of any length and return the events it completes."""
        data = self._carry + pcm
        usable = len(data) - len(data) % 2
        self._carry = data[usable:]
        data = data[:usable]
        self._buf.extend(data)
        self._received += len(data) // 2
        events: list[Event] = []
        for speech in self._endpointer.feed(data):
            if isinstance(speech, SpeechStart):
                self._open(speech.sample)
            else:
                self._close(speech, events)
        if self._seg_start is not None:
            self._feed_engine(self._received, events)
        else:
            self._trim(self._received - self._endpointer.lookback_samples)
        return events

    def end(self) -> list[Event]:
        """End of stream: finish the open segment (a trailing odd byte is dropped)."""
        events: list[Event] = []
        self._carry = b""
        for speech in self._endpointer.flush():
            if isinstance(speech, SpeechEnd):
                self._close(speech, events)
        return events

    def _open(self, sample: int) -> None:
        if self._epoch is None:
            # A new epoch: the engine forgets the last one now, not when that ended,
            # so that dropping its state never delays a final.
            if self._engine_used and isinstance(self._engine, Renewable):
                self._engine.renew()
            self._engine_used = False
            self._epoch = (sample, self._next_segment)
        self._seg_start = sample
        self._fed = sample
        self._origin = None
        self._since_partial = 0

    def _close(self, speech: SpeechEnd, events: list[Event]) -> None:
        assert self._seg_start is not None
        self._feed_engine(speech.sample, events, partials=False)
        decoded = self._engine.finish()
        if decoded.text:
            words = None
            if decoded.words is not None:
                offset = (self._seg_start if self._origin is None else self._origin) / self._rate
                words = tuple(
                    WordTime(w.word, offset + w.start, offset + w.end) for w in decoded.words
                )
            events.append(
                Final(
                    segment=self._next_segment,
                    text=decoded.text,
                    likelihood=decoded.likelihood,
                    start=self._seg_start / self._rate,
                    length=(speech.sample - self._seg_start) / self._rate,
                    total=self._received / self._rate,
                    words=words,
                    align_failed=decoded.align_failed,
                )
            )
            self._next_segment += 1
        self._seg_start = None
        assert self._epoch is not None
        if speech.sample - self._epoch[0] >= self._epoch_samples:
            self._epoch = None

    def _feed_engine(self, until: int, events: list[Event], *, partials: bool = True) -> None:
        """Give the engine the open segment's audio from ``_fed`` up to ``until``."""
        if until <= self._fed:
            return
        lo = max(0, 2 * (self._fed - self._buf_start))
        hi = 2 * (until - self._buf_start)
        if self._origin is None:
            self._origin = self._buf_start + lo // 2
        self._engine.accept(bytes(self._buf[lo:hi]))
        self._engine_used = True
        self._since_partial += until - self._fed
        self._fed = until
        self._trim(until)
        if partials and self._since_partial >= self._partial_samples:
            self._since_partial = 0
            text = self._engine.partial()
            if text:  # unchanged or not, as kaldi-gstreamer-server's traceback period
                events.append(Partial(self._next_segment, text))

    def _trim(self, keep_from: int) -> None:
        """Forget buffered audio before ``keep_from`` (absolute sample)."""
        drop = keep_from - self._buf_start
        if drop > 0:
            del self._buf[: 2 * drop]
            self._buf_start = keep_from


def decode_pcm(
    engine: Engine,
    rules: EndpointRules,
    pcm: bytes,
    chunk_bytes: int = 8000,
    *,
    endpointer: EndpointerConfig = DEFAULT_ENDPOINTER,
    epoch_s: float = EPOCH_S,
) -> list[Final]:
    """Decode a whole recording in-process; the reference the cluster is compared to."""
    recognizer = Recognizer(
        engine, rules, partial_interval=float("inf"), endpointer=endpointer, epoch_s=epoch_s
    )
    finals: list[Final] = []
    for i in range(0, len(pcm), chunk_bytes):
        finals.extend(e for e in recognizer.feed(pcm[i : i + chunk_bytes]) if isinstance(e, Final))
    finals.extend(e for e in recognizer.end() if isinstance(e, Final))
    if isinstance(engine, Renewable):
        engine.renew()  # what a session's end does to its decoding process
    return finals
