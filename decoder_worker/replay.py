"""Replay points: where a session's decoding resumes, and which audio gets it there.

Pure arithmetic, no I/O. A session's audio stream is a sequence of entries; the
decoder reports, with its events, the sample a replacement would have to restart at
to reproduce what comes next, and the number of the segment that starts there: the
start of the decoder's *epoch*, the first segment its current decoding process
decoded (:mod:`decoder_worker.recognizer`), or with no epoch open the start of the next
segment. The worker saves that as a
:class:`ReplayPoint`, atomically with the finals before it
(:func:`shared.records.save_finals`), and trims the stream entries that lie wholly
before it. Whoever resumes the session — another worker after this one died, or
this one after its decoder process died — reads the entries after
:attr:`ReplayPoint.after` and hands its decoder the audio from
:attr:`ReplayPoint.sample` on. :class:`AudioLedger` does that bookkeeping for one
decoding pass.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TRIM_AFTER_S", "AudioLedger", "ReplayPoint"]

#: Without finals, the replay point is saved (and the audio trimmed) once it has moved
#: this many seconds, so long silences do not pile up in Redis. Below the 5 s at which a
#: session process reports its point in silence (``slots.REPORT_EVERY_S``): the point
#: lies on the VAD's 30 ms frame grid, so one report moves it by up to a frame less.
TRIM_AFTER_S = 4.0


@dataclass(frozen=True)
class ReplayPoint:
    """Where decoding of a session resumes: the start of its decoder's epoch.

    ``after`` is the audio-stream entry id to read after (exclusive), ``base`` the
    absolute sample index of the first sample of the next entry, ``sample`` the
    absolute sample index the decoder restarts at (``sample >= base``),
    ``replay_segment`` the number the segment starting there gets, ``segment`` the
    number of the next final not yet delivered (``segment >= replay_segment``: a
    replay decodes again the epoch's finals already delivered, and drops them).
    """

    segment: int = 0
    after: str = "0-0"
    base: int = 0
    sample: int = 0
    replay_segment: int = 0

    def fields(self) -> dict[str, str | int]:
        """The point as fields of the session's record (its meta hash)."""
        return {
            "next_segment": self.segment,
            "replay_after": self.after,
            "replay_base": self.base,
            "replay_sample": self.sample,
            "replay_segment": self.replay_segment,
        }

    @classmethod
    def read(cls, meta: Mapping[bytes, bytes]) -> ReplayPoint:
        """The point saved in a record (``HGETALL``); a fresh session's when none is."""
        segment = int(meta.get(b"next_segment", b"0"))
        return cls(
            segment=segment,
            after=meta.get(b"replay_after", b"0-0").decode(),
            base=int(meta.get(b"replay_base", b"0")),
            sample=int(meta.get(b"replay_sample", b"0")),
            replay_segment=int(meta.get(b"replay_segment", segment)),
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    """An audio entry handed to the decoder: its id and its first sample's index."""

    entry_id: str
    start: int


class AudioLedger:
    """The audio entries of one decoding pass that a later replay may still need.

    Started from the replay point the pass resumes at, it is told each audio entry read
    after :attr:`ReplayPoint.after` (:meth:`take`, which returns what of it goes to the
    decoder), and each replay sample the decoder reports (:meth:`advance`, which returns
    the new point to save and where the stream may be trimmed). Audio is s16le mono:
    two bytes a sample.
    """

    def __init__(self, point: ReplayPoint, sample_rate: int) -> None:
        #: the replay point last saved (at first, the one this pass started from)
        self.point = point
        #: absolute index of the first sample of the next entry
        self.position = point.base
        self._sample_rate = sample_rate
        self._entries: deque[_Entry] = deque()
        self._skip = (point.sample - point.base) * 2  # bytes before the restart sample

    def take(self, entry_id: str, pcm: bytes) -> bytes:
        """Note the next entry of the stream; return the part the decoder is to get:
        all of it, but for what lies before the restart sample."""
        self._entries.append(_Entry(entry_id, self.position))
        self.position += len(pcm) // 2
        if self._skip:
            cut = min(self._skip, len(pcm))
            pcm, self._skip = pcm[cut:], self._skip - cut
        return pcm

    def worth_saving(self, sample: int) -> bool:
        """Without finals to save: has the replay point moved on enough (to ``sample``)
        for saving it, and trimming the audio before it, to be worth a write?"""
        return (sample - self.point.sample) / self._sample_rate >= TRIM_AFTER_S

    def advance(
        self, sample: int, last_final: int | None = None, *, replay_segment: int | None = None
    ) -> tuple[ReplayPoint, str]:
        """The decoder's replay point is now ``sample``, where segment ``replay_segment``
        starts (None: the next final's), and the finals up to number ``last_final``
        (None: no new final) are saved with it.

        Returns the new replay point (which becomes :attr:`point`) and the id of the
        first entry still needed: the stream may be trimmed before it (``""``: not at
        all). Entries are forgotten once the next one starts at or before ``sample``;
        the first one kept is the one ``sample`` falls in (or the last one taken).
        """
        after, base = self.point.after, self.point.base
        while len(self._entries) > 1 and self._entries[1].start <= sample:
            after = self._entries.popleft().entry_id
            base = self._entries[0].start
        segment = self.point.segment if last_final is None else last_final + 1
        if replay_segment is None:
            replay_segment = segment
        self.point = ReplayPoint(segment, after, base, max(sample, base), replay_segment)
        return self.point, self._entries[0].entry_id if self._entries else ""
