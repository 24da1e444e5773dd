"""Character error rate against the recordings' reference transcripts.

CER compares characters with spaces and punctuation removed, because the model splits
words into morphemes and word error rate would count every split as an error.
"""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

from harness.env import TESTDATA

#: The quick set of real recordings (``manifest.tsv`` + clips).
DEFAULT_CLIPS = TESTDATA


def normalise(text: str) -> str:
    """Letters and digits only: drops spaces, punctuation and the model's ``[ ]``/``( )``."""
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


def cer(ref: str, hyp: str) -> tuple[int, int]:
    """(edit distance, reference length) over normalised characters."""
    r, h = normalise(ref), normalise(hyp)
    previous = list(range(len(h) + 1))
    for i, rc in enumerate(r, 1):
        current = [i]
        for j, hc in enumerate(h, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (rc != hc)))
        previous = current
    return previous[-1], len(r)


def read_manifest(clips: Path) -> list[tuple[Path, str]]:
    """(wav path, reference transcript) for every row of ``manifest.tsv``."""
    with (clips / "manifest.tsv").open(encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(clips / row["file"], row["transcript"]) for row in rows]
