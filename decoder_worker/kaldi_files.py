"""Kaldi's and OpenFst's binary files, read into numpy arrays.

What :mod:`decoder_worker.lexicon` needs from a model, without Kaldi or OpenFst in the
process: the phone of every transition-id (the transition model at the head of
``final.mdl``), the word position of every phone (``word_boundary.int``), and an FST's
arcs (:func:`read_graph`). Formats, as Kaldi and OpenFst write them:

* Kaldi binary (``\\0B`` first): a token is its text and a space; a number is a size
  byte and the little-endian value; an integer vector a size byte, an int32 count and
  the values. ``<TransitionModel>`` starts with ``<Topology>`` (phones, phone -> entry,
  the entries' HMM states with their transitions), then ``<Triples>``/``<Tuples>``
  (phone, HMM state, pdfs): one transition state each, numbered from 1.
* OpenFst: a header (magic, FST type, arc type, version, flags, properties, start,
  state and arc counts), symbol tables if the flags say so, then per type. A ``const``
  FST is two arrays of fixed-size records, states (final weight, first arc, arc count,
  epsilon counts) and arcs (input label, output label, weight, next state), 16-byte
  aligned in file version 1. A ``*_lookahead`` FST (an add-on FST: Vosk's ``HCLr.fst``)
  is a header, a magic number and the FST it wraps, then the lookahead data.
  Other types are converted with ``fstconvert --fst_type=const`` first.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

__all__ = [
    "BEGIN",
    "END",
    "INTERNAL",
    "NONWORD",
    "NO_PHONE",
    "SINGLETON",
    "FileFormatError",
    "Graph",
    "read_graph",
    "read_transition_phones",
    "read_word_positions",
]

# Word positions, as word_boundary.int names them; NO_PHONE for arcs without a phone.
NO_PHONE, NONWORD, BEGIN, END, INTERNAL, SINGLETON = range(6)
_POSITION_NAMES = {
    "nonword": NONWORD,
    "begin": BEGIN,
    "end": END,
    "internal": INTERNAL,
    "singleton": SINGLETON,
}

_FST_MAGIC = 2125659606
_SYMBOL_TABLE_MAGIC = 2125658996
_ADDON_MAGIC = 446681434
_FST_HAS_ISYMBOLS, _FST_HAS_OSYMBOLS, _FST_IS_ALIGNED = 1, 2, 4
_CONST_ALIGNED_VERSION = 1  # OpenFst's ConstFst: version 1 is aligned, 2 is not
_ALIGNMENT = 16

_STATE = np.dtype(
    [("final", "<f4"), ("pos", "<u4"), ("narcs", "<u4"), ("nie", "<u4"), ("noe", "<u4")]
)
_ARC = np.dtype([("ilabel", "<i4"), ("olabel", "<i4"), ("weight", "<f4"), ("next", "<i4")])

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]


class FileFormatError(Exception):
    """A file is not in the format expected, or a tool converting it failed."""


# ------------------------------------------------------------------ transition model


class _KaldiBinary:
    """Kaldi's binary serialisation: tokens end with a space; a number is a size byte
    then the raw little-endian value; an integer vector is a size byte, a raw int32
    count and the raw values."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self._f = stream
        self._name = name

    def _read(self, n: int) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise FileFormatError(f"{self._name}: unexpected end of file")
        return data

    def token(self) -> str:
        out = bytearray()
        while (c := self._read(1)) != b" ":
            out += c
            if len(out) > 64:
                raise FileFormatError(f"{self._name}: not a Kaldi binary token")
        return out.decode("ascii", "replace")

    def expect(self, token: str) -> None:
        got = self.token()
        if got != token:
            raise FileFormatError(f"{self._name}: expected {token}, found {got!r}")

    def _sized(self, fmt: str) -> float | int:
        size = self._read(1)[0]
        if size != struct.calcsize(fmt):
            raise FileFormatError(f"{self._name}: unexpected number size {size}")
        value: float | int = struct.unpack(fmt, self._read(size))[0]
        return value

    def int32(self) -> int:
        return int(self._sized("<i"))

    def float32(self) -> float:
        return float(self._sized("<f"))

    def int_vector(self) -> I32:
        if self._read(1)[0] != 4:
            raise FileFormatError(f"{self._name}: expected a vector of int32")
        (count,) = struct.unpack("<i", self._read(4))
        return np.frombuffer(self._read(4 * count), dtype="<i4").astype(np.int32)


def read_transition_phones(final_mdl: Path) -> npt.NDArray[np.int16]:
    """Phone of every transition-id, from the transition model heading ``final.mdl``.

    Index 0 and self-loop transition-ids map to 0 ("no phone"). Transition-ids are
    numbered from 1 over the transition states (one per ``<Tuples>``/``<Triples>``
    entry: phone, HMM state, pdfs), each taking as many ids as its HMM state has
    transitions in the phone's topology entry; a transition back to the same HMM state is
    a self-loop (Kaldi's ``TransitionModel::ComputeDerived`` and ``IsSelfLoop``).
    """
    with final_mdl.open("rb") as f:
        if f.read(2) != b"\0B":
            raise FileFormatError(f"{final_mdl}: not a Kaldi binary model")
        r = _KaldiBinary(f, str(final_mdl))
        r.expect("<TransitionModel>")
        r.expect("<Topology>")
        r.int_vector()  # the phones the topology covers
        phone2idx = r.int_vector()
        entries = r.int32()
        hmm = entries != -1  # -1 announces the newer format with separate self-loop pdfs
        if not hmm:
            entries = r.int32()
        # dests[entry][hmm state] = destination HMM state of each transition
        dests: list[list[list[int]]] = []
        for _ in range(entries):
            states: list[list[int]] = []
            for _ in range(r.int32()):
                r.int32()  # forward pdf class
                if not hmm:
                    r.int32()  # self-loop pdf class
                transitions = []
                for _ in range(r.int32()):
                    transitions.append(r.int32())
                    r.float32()  # probability
                states.append(transitions)
            dests.append(states)
        r.expect("</Topology>")
        kind = r.token()
        if kind not in ("<Triples>", "<Tuples>"):
            raise FileFormatError(f"{final_mdl}: unexpected {kind!r} in the transition model")
        fields = 3 if kind == "<Triples>" else 4
        count = r.int32()
        phones: list[int] = [0]
        for _ in range(count):
            phone, hmm_state = r.int32(), r.int32()
            for _ in range(fields - 2):
                r.int32()  # pdf ids
            try:
                entry = dests[phone2idx[phone]]
                transitions = entry[hmm_state]
            except IndexError:
                raise FileFormatError(
                    f"{final_mdl}: phone {phone} state {hmm_state} is not in the topology"
                ) from None
            phones.extend(0 if dest == hmm_state else phone for dest in transitions)
    return np.array(phones, dtype=np.int16)


def read_word_positions(word_boundary: Path) -> npt.NDArray[np.int8]:
    """Word position of every phone id (``word_boundary.int``); NO_PHONE where unlisted."""
    pairs: list[tuple[int, int]] = []
    for line in word_boundary.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            number, name = line.split()
            pairs.append((int(number), _POSITION_NAMES[name]))
        except (ValueError, KeyError):
            raise FileFormatError(f"{word_boundary}: unexpected line {line!r}") from None
    out = np.zeros(max((p for p, _ in pairs), default=0) + 1, dtype=np.int8)
    for phone, position in pairs:
        out[phone] = position
    return out


# ---------------------------------------------------------------------------- graph


@dataclass(frozen=True)
class Graph:
    """An FST as arrays: the arcs of state ``s`` are ``arc_start[s]:arc_start[s + 1]``."""

    arc_start: I64  #: int64[states + 1]
    ilabel: I32
    olabel: I32
    dst: I32

    @property
    def num_states(self) -> int:
        return len(self.arc_start) - 1


class _Reader:
    """Little-endian values from a binary file, with its name in every error."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self.f = stream
        self.name = name

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise FileFormatError(f"{self.name}: truncated OpenFst file")
        return struct.unpack(fmt, data)

    def string(self) -> str:
        (n,) = self.unpack("<i")
        if not 0 <= n < 1 << 16:
            raise FileFormatError(f"{self.name}: damaged OpenFst file")
        return bytes(self.unpack(f"<{n}s")[0]).decode("ascii", "replace")

    def array(self, dtype: np.dtype[Any], count: int) -> npt.NDArray[Any]:
        out = np.fromfile(self.f, dtype=dtype, count=count)
        if len(out) != count:
            raise FileFormatError(f"{self.name}: truncated OpenFst file")
        return out


def _header(r: _Reader) -> dict[str, int | str]:
    """An OpenFst FstHeader."""
    (magic,) = r.unpack("<i")
    if magic != _FST_MAGIC:
        raise FileFormatError(f"{r.name}: not an OpenFst binary file")
    fst_type, arc_type = r.string(), r.string()
    version, flags, _props, start, states, arcs = r.unpack("<iiQqqq")
    return {
        "type": fst_type,
        "arc": arc_type,
        "version": version,
        "flags": flags,
        "start": start,
        "states": states,
        "arcs": arcs,
    }


def _skip_symbols(r: _Reader) -> None:
    """Skip a binary SymbolTable: magic, name, available key, size, (symbol, key)…"""
    (magic,) = r.unpack("<i")
    if magic != _SYMBOL_TABLE_MAGIC:
        raise FileFormatError(f"{r.name}: damaged symbol table")
    r.string()
    _available, size = r.unpack("<qq")
    for _ in range(size):
        r.string()
        r.unpack("<q")


def _const_arrays(r: _Reader) -> Graph | None:
    """The arrays of the (possibly add-on wrapped) const FST at the reader's position;
    None if the FST is of another type."""
    head = _header(r)
    if head["arc"] != "standard":
        raise FileFormatError(f"{r.name}: arc type {head['arc']} (only 'standard' is supported)")
    flags = int(head["flags"])
    if str(head["type"]).endswith("_lookahead"):
        if flags & (_FST_HAS_ISYMBOLS | _FST_HAS_OSYMBOLS):
            return None
        if r.unpack("<i")[0] != _ADDON_MAGIC:
            raise FileFormatError(f"{r.name}: damaged lookahead FST")
        return _const_arrays(r)
    if head["type"] != "const":
        return None
    for flag in (_FST_HAS_ISYMBOLS, _FST_HAS_OSYMBOLS):
        if flags & flag:
            _skip_symbols(r)
    aligned = head["version"] == _CONST_ALIGNED_VERSION or bool(flags & _FST_IS_ALIGNED)
    nstates, narcs = int(head["states"]), int(head["arcs"])

    def region(dtype: np.dtype[Any], count: int) -> npt.NDArray[Any]:
        if aligned:
            r.f.seek(-r.f.tell() % _ALIGNMENT, os.SEEK_CUR)
        return r.array(dtype, count)

    states = region(_STATE, nstates)
    arc_start = np.empty(nstates + 1, dtype=np.int64)
    arc_start[:-1] = states["pos"]
    arc_start[-1] = narcs
    if nstates and (arc_start[0] != 0 or np.any(np.diff(arc_start) != states["narcs"])):
        raise FileFormatError(f"{r.name}: arcs are not stored state by state")
    del states
    arcs = region(_ARC, narcs)
    graph = Graph(
        arc_start=arc_start,
        ilabel=arcs["ilabel"].astype(np.int32),
        olabel=arcs["olabel"].astype(np.int32),
        dst=arcs["next"].astype(np.int32),
    )
    if narcs and (graph.dst.min() < 0 or graph.dst.max() >= nstates):
        raise FileFormatError(f"{r.name}: an arc leads to a state that does not exist")
    return graph


def _read_const(path: Path) -> Graph | None:
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise FileFormatError(f"{path}: empty file")
        return _const_arrays(_Reader(f, str(path)))


def read_graph(
    path: Path, env: Mapping[str, str] | None = None, scratch: Path | None = None
) -> Graph:
    """Read an FST's arcs. ``const`` FSTs (also inside ``*_lookahead`` FSTs) are read
    directly; anything else goes through ``fstconvert --fst_type=const`` first, in a
    temporary directory in ``scratch`` (``env``: the environment for the OpenFst tools,
    with their plugins on the library path)."""
    graph = _read_const(path)
    if graph is not None:
        return graph
    with tempfile.TemporaryDirectory(prefix="ksc-fst-", dir=scratch) as tmp:
        const = Path(tmp) / "graph.fst"
        proc = subprocess.run(
            ["fstconvert", "--fst_type=const", str(path), str(const)],
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            check=False,
        )
        if proc.returncode != 0:
            raise FileFormatError(
                f"fstconvert {path} failed: {proc.stderr.decode(errors='replace')[-500:]}"
            )
        graph = _read_const(const)
    if graph is None:
        raise FileFormatError(f"{path}: fstconvert did not produce a const FST")
    return graph
