"""Word times of a finished utterance: kaldi-active-grammar's word alignment.

KaG aligns the best path of a finalised utterance to its words
(``get_word_align``) when the decoder holds an alignment lexicon (Kaldi's
``align_lexicon.int`` lines ``word word phone…``; for the default model it is derived
at ``ksc model prepare``, :mod:`decoder_worker.lexicon`). Two ways to hand it one:

* **the whole lexicon**, loaded by the decoder's constructor: 3.4 s more to load and
  about 380 MB more per worker (shared by its forks, but a worker's memory all the same);
* **per utterance** (what the worker does): after finalising, the decoding process
  loads a lexicon of just that utterance's words (a few lines, read through the
  lexicon's byte-offset index) from an in-memory file. A few milliseconds of CPU per
  utterance, against the hundreds its decoding costs, and no memory to speak of. The
  measured comparison is ``python -m benchmarks.word_times`` (``docs/engine.md``).

The lexicon is keyed by word id; the decoder's output is text. :class:`WordIds` maps
words to ids without a 500k-entry Python dict (76 MB): sorted 32-bit hashes of the
words of ``words.txt`` and the ids beside them, 4 MB of arrays built once before the
worker forks and shared by every fork. The hash is Python's own, which is randomised
per interpreter but the same in every fork of it — the only place the arrays are used.
A collision (a few dozen pairs among half a million words) costs nothing: every id
whose hash matches gets its lines in the file. The lexicon's byte-offset index is
mapped, not read: only the pages of the words looked up are ever in memory.

Times: KaG counts in bytes of 16-bit audio (frames of 30 ms: 10 ms times the model's
frame subsampling of 3), so seconds are ``bytes / (2 * rate)``, from the utterance's
first sample. Alignment takes the raw output, ``#nonterm:*`` markers included (KaG
checks the word count), and the markers are dropped afterwards. It fails — the words
then go out without times, never the session — for a lattice that was "forced out"
(audio that ends inside a word) and for anything the lexicon lacks.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Aligner", "AlignmentFailed", "WordIds"]

_NONTERM = "#nonterm:"
#: Lines of ``words.txt`` read at once while hashing it.
_READ_BYTES = 1 << 20


class AlignmentFailed(Exception):
    """KaG could not align this utterance's words (the reason is in the text)."""


class WordIds:
    """Word -> ids of ``words.txt``, as sorted hashes (see the module's docstring)."""

    def __init__(self, hashes: npt.NDArray[np.uint32], ids: npt.NDArray[np.int32]) -> None:
        self._hashes = hashes
        self._ids = ids

    @classmethod
    def read(cls, words_txt: Path) -> WordIds:
        hashes: list[npt.NDArray[np.uint32]] = []
        ids: list[npt.NDArray[np.int32]] = []
        with words_txt.open("rb") as f:
            while lines := f.readlines(_READ_BYTES):
                pairs = [line.split() for line in lines]
                pairs = [pair for pair in pairs if len(pair) == 2]
                hashes.append(np.fromiter((_hash(p[0]) for p in pairs), np.uint32, len(pairs)))
                ids.append(np.fromiter((int(p[1]) for p in pairs), np.int32, len(pairs)))
        all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint32)
        order = np.argsort(all_hashes, kind="stable")
        table = cls(all_hashes[order], np.concatenate(ids)[order] if ids else np.zeros(0, np.int32))
        del hashes, ids, all_hashes, order
        _give_back_memory()  # the parse's garbage, before the worker forks
        return table

    def __len__(self) -> int:
        return len(self._ids)

    def lookup(self, word: str) -> list[int]:
        """The ids whose word hashes like ``word`` (normally one; none if unknown)."""
        key = np.uint32(_hash(word.encode("utf-8")))
        lo = int(np.searchsorted(self._hashes, key, side="left"))
        hi = int(np.searchsorted(self._hashes, key, side="right"))
        return [int(i) for i in self._ids[lo:hi]]


def _hash(word: bytes) -> int:
    return hash(word) & 0xFFFFFFFF


def _give_back_memory() -> None:
    """glibc keeps freed heap memory unless asked; a worker's forks would carry it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


class Aligner:
    """Aligns a finalised utterance of one KaG decoder.

    ``whole_lexicon``: the decoder was constructed with the full lexicon (kept for the
    benchmark's comparison); otherwise each utterance loads its own few lines.
    """

    def __init__(
        self, lexicon: Path, index: Path, ids: WordIds, sample_rate: int, *, whole_lexicon: bool
    ) -> None:
        #: the lexicon file (``align_lexicon.ksc.int``), sorted by word id
        self.lexicon = lexicon
        #: the byte offsets of each word id's lines in it (mapped, not read)
        self.offsets: npt.NDArray[np.int64] = np.load(index, mmap_mode="r")
        self.ids = ids
        self.whole_lexicon = whole_lexicon
        self._bytes_per_second = 2 * sample_rate

    @classmethod
    def for_model(
        cls, lexicon: Path, index: Path, words_txt: Path, sample_rate: int, *, whole: bool = False
    ) -> Aligner:
        return cls(
            lexicon,
            index,
            WordIds.read(words_txt),
            sample_rate,
            whole_lexicon=whole,
        )

    def lines(self, words: Iterable[str]) -> str:
        """The lexicon lines an alignment of ``words`` needs: each word's
        pronunciations and those of word 0 (optional silence), in word-id order."""
        offsets = self.offsets
        top = len(offsets) - 1
        wanted = sorted({0, *(i for word in words for i in self.ids.lookup(word) if i < top)})
        parts: list[bytes] = []
        with self.lexicon.open("rb") as f:
            for word_id in wanted:
                begin, end = int(offsets[word_id]), int(offsets[word_id + 1])
                if end > begin:
                    f.seek(begin)
                    parts.append(f.read(end - begin))
        return b"".join(parts).decode("ascii")

    def align(self, decoder: Any, raw: str) -> tuple[tuple[str, float, float], ...]:
        """(word, start, end) in seconds from the utterance's first sample, for the
        words of ``raw`` (the decoder's output of the utterance it just finalised, with
        its ``#nonterm`` markers); the markers are not in the result. Raises
        :class:`AlignmentFailed`."""
        from kaldi_active_grammar import KaldiError

        words = raw.split()
        try:
            if not self.whole_lexicon:
                self._load(decoder, words)
            aligned = decoder.get_word_align(raw)
        except (KaldiError, OSError) as exc:
            raise AlignmentFailed(str(exc)) from exc
        rate = self._bytes_per_second
        return tuple(
            (word, start / rate, (start + length) / rate)
            for word, start, length in aligned
            if not word.startswith(_NONTERM)
        )

    def _load(self, decoder: Any, words: list[str]) -> None:
        """Give the decoder a lexicon of ``words`` only, from an in-memory file (no disk,
        gone with the process)."""
        fd = os.memfd_create("ksc-align-lexicon", os.MFD_CLOEXEC)
        try:
            os.write(fd, self.lines(words).encode("ascii"))
            # "" keeps the decoder's word symbols; only the lexicon is replaced.
            decoder.load_lexicon("", f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
