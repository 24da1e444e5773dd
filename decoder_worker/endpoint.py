"""Voice-activity endpointing: where speech segments start and end in a PCM stream.

kaldi-active-grammar decodes but never decides that an utterance is over, so the
worker segments the stream itself. This module is pure logic over ``webrtcvad``: feed
it PCM in any chunking and it reports :class:`SpeechStart` and :class:`SpeechEnd` at
absolute sample offsets. Decisions are taken per VAD frame from a frame-aligned
buffer, so the result never depends on how the input was chunked.

How Kaldi's endpoint rules (:class:`~decoder_worker.model.EndpointRules`) map onto a
VAD, which knows nothing about the decoder's final states:

rule 1
    Silence with nothing decoded never becomes a segment: a segment only opens on a
    speech onset, so there is nothing to emit.
rule 2 (shortest trailing silence, Kaldi: "at a final state with a good cost")
    Applies once the utterance is long — at least half of the rule-5 maximum — where a
    cut at any clear pause beats the forced rule-5 cut in the middle of a word.
rule 3 (Kaldi: "at a final state with an acceptable cost")
    The ordinary end of an utterance: this much trailing silence after the last
    voiced frame.
rule 4 (Kaldi: "whatever the decoder state")
    Noise-robust end: the VAD flickers on background noise and keeps resetting the
    rule-3 silence counter; if fewer than a tenth of the frames over the rule-4 window
    were voiced, the utterance is over.
rule 5
    The utterance has reached the maximum length: cut now. If speech continues, the
    next segment starts at the cut, with no gap and no overlap.

Onsets need ``onset_frames`` voiced frames among the last ``onset_window`` (so isolated
clicks do not open segments), and a segment starts ``preroll`` seconds before the first
of those voiced frames so that soft onsets are not clipped — but never before the end
of the previous segment.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import webrtcvad

from decoder_worker.model import EndpointRules

__all__ = [
    "DEFAULT_ENDPOINTER",
    "Endpointer",
    "EndpointerConfig",
    "SpeechEnd",
    "SpeechEvent",
    "SpeechStart",
]


@dataclass(frozen=True)
class SpeechStart:
    """A segment opens at ``sample`` (absolute, pre-roll included)."""

    sample: int


@dataclass(frozen=True)
class SpeechEnd:
    """The open segment ends at ``sample`` (absolute, exclusive); ``reason`` names the rule."""

    sample: int
    reason: str


SpeechEvent = SpeechStart | SpeechEnd


@dataclass(frozen=True)
class EndpointerConfig:
    """VAD tuning. The defaults were chosen on the Korean test set (see docs/engine.md).

    webrtcvad's mode 3 (of 0 to 3): on the Korean test set it scored the same CER as
    mode 2 (0.265 vs 0.263, noise), but mode 2 keeps calling background noise speech
    after its noise estimate adapted to a quieter stretch, so segments never end
    until rule 5; mode 3 does not. 30 ms frames give the VAD the most context per
    decision.
    """

    aggressiveness: int = 3
    frame_ms: int = 30
    preroll: float = 0.3
    onset_frames: int = 4
    onset_window: int = 6
    rule4_max_voiced_fraction: float = 0.1


#: The tuning used unless a caller passes its own.
DEFAULT_ENDPOINTER = EndpointerConfig()


class Endpointer:
    """Segments a stream of s16le mono PCM with webrtcvad and Kaldi-like rules."""

    def __init__(
        self,
        rules: EndpointRules,
        sample_rate: int = 16000,
        config: EndpointerConfig = DEFAULT_ENDPOINTER,
        *,
        offset_samples: int = 0,
    ) -> None:
        if sample_rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"webrtcvad does not support {sample_rate} Hz")
        if config.frame_ms not in (10, 20, 30):
            raise ValueError("frame_ms must be 10, 20 or 30")
        self._rules = rules
        self._config = config
        self._rate = sample_rate
        self._vad = webrtcvad.Vad(config.aggressiveness)
        self._frame = sample_rate * config.frame_ms // 1000
        self._frame_bytes = 2 * self._frame
        self._pending = bytearray()
        self._pos = offset_samples  # absolute sample at the start of _pending
        self._received = offset_samples
        self._last_end = offset_samples
        self._recent: deque[tuple[int, bool]] = deque(maxlen=config.onset_window)
        self._seg_start: int | None = None
        self._last_voiced_end = 0
        self._window: deque[bool] = deque(maxlen=self._frames(rules.rule4_min_trailing_silence))

    def _frames(self, seconds: float) -> int:
        return max(1, round(seconds * self._rate / self._frame))

    @property
    def in_segment(self) -> bool:
        """Whether a segment is open."""
        return self._seg_start is not None

    @property
    def segment_start(self) -> int | None:
        """Absolute start sample of the open segment, if any."""
        return self._seg_start

    @property
    def lookback_samples(self) -> int:
        """How far before the current position a segment that opens next may start.

        A caller that buffers audio for the engine must keep at least this much while
        no segment is open.
        """
        window = self._config.onset_window * self._frame
        return window + self._frame + int(self._config.preroll * self._rate)

    @property
    def samples_without_speech(self) -> int:
        """Samples received since a segment was last open (0 while one is): what the
        silence timeout counts."""
        if self._seg_start is not None:
            return 0
        return self._received - self._last_end

    @property
    def earliest_next_start(self) -> int:
        """The earliest sample a segment not yet opened could start at.

        Counted from the last whole VAD frame, so that it lies on the frame grid of the
        stream (as segment starts and ends do): an endpointer started there frames the
        audio exactly as this one does, and finds the same segments."""
        return max(self._last_end, self._pos - self.lookback_samples)

    def feed(self, pcm: bytes) -> list[SpeechEvent]:
        """Consume PCM (any length, even odd) and return the events it completes."""
        self._pending.extend(pcm)
        self._received = self._pos + len(self._pending) // 2
        events: list[SpeechEvent] = []
        fb = self._frame_bytes
        offset = 0
        while len(self._pending) - offset >= fb:
            frame = bytes(self._pending[offset : offset + fb])
            offset += fb
            start = self._pos
            self._pos += self._frame
            self._step(start, self._vad.is_speech(frame, self._rate), events)
        del self._pending[:offset]
        return events

    def flush(self) -> list[SpeechEvent]:
        """End of stream: close the open segment at the last received sample."""
        events: list[SpeechEvent] = []
        if self._seg_start is not None:
            events.append(self._end(self._received, "eos"))
        return events

    def _step(self, start: int, voiced: bool, events: list[SpeechEvent]) -> None:
        end = start + self._frame
        self._window.append(voiced)
        if self._seg_start is None:
            self._recent.append((start, voiced))
            if sum(v for _, v in self._recent) < self._config.onset_frames:
                return
            first_voiced = next(s for s, v in self._recent if v)
            seg_start = max(self._last_end, first_voiced - int(self._config.preroll * self._rate))
            self._open(seg_start, end, events)
            return
        if voiced:
            self._last_voiced_end = end
        rules = self._rules
        silence = (end - self._last_voiced_end) / self._rate
        length = (end - self._seg_start) / self._rate
        reason = None
        if length >= rules.rule5_max_utterance_length:
            reason = "rule5"
        elif silence >= rules.rule3_min_trailing_silence:
            reason = "rule3"
        elif silence >= rules.rule2_min_trailing_silence and (
            length >= rules.rule5_max_utterance_length / 2
        ):
            reason = "rule2"
        elif (
            len(self._window) == self._window.maxlen
            and length >= rules.rule4_min_trailing_silence
            and sum(self._window) <= self._config.rule4_max_voiced_fraction * len(self._window)
        ):
            reason = "rule4"
        if reason is None:
            return
        events.append(self._end(end, reason))
        if reason == "rule5" and voiced:
            # Speech goes on: the next segment starts exactly at the cut.
            self._open(end, end, events)

    def _open(self, seg_start: int, now: int, events: list[SpeechEvent]) -> None:
        self._seg_start = seg_start
        self._last_voiced_end = now
        self._recent.clear()
        events.append(SpeechStart(seg_start))

    def _end(self, sample: int, reason: str) -> SpeechEnd:
        self._seg_start = None
        self._last_end = sample
        self._recent.clear()
        return SpeechEnd(sample, reason)
