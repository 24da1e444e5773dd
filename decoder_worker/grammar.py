"""Phrase-list grammars: a session's phrases as a kaldi-active-grammar rule FST.

A session that carries phrases is decoded with one grammar that accepts exactly those
phrases instead of the dictation grammar. The grammar is a word-level FST in OpenFst
text form with the model's words as symbols — the form kaldi-active-grammar's lookahead
decoder (``KaldiLafNNet3Decoder.add_grammar_fst_text``) composes on the fly with the
model's ``HCLr.fst``, exactly as KaG's own compiler hands it rules for that framework.
Phrases sharing a prefix share states (a trie), all phrases end in one final state.

Where it happens: the worker checks the phrases against the model's vocabulary and
builds the FST text (:class:`GrammarCompiler`, cached per phrase set under a digest of
the normalised list), the session's decoder process adds it to its copy of the engine
(:meth:`decoder_worker.engine.KagEngine.restrict`) before the first utterance, so every
utterance of the session — decoded in forks of that process, one per decoder epoch —
uses it.
The worker's own engine never sees a grammar; sessions without phrases are untouched.

A phrase with a word the model does not know, an empty list or one over the bounds
of :func:`shared.protocol.parse_phrases` raises :class:`GrammarError`: the session ends
with status 7 naming the word, nothing else is affected. The vosk dialect asks for
vosk-server's treatment instead (``skip_unknown``): a word the model lacks is dropped
from its phrase with a warning, a phrase left empty is dropped, and only a list left
with no phrase is refused. Either way a word missing as written is looked up in the
other case too (the default model spells Latin-script words in capitals: ``ZERO``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared.protocol import BadGrammar, parse_phrases

__all__ = [
    "CACHE_SIZE",
    "GrammarCompiler",
    "GrammarError",
    "Restrictable",
    "digest",
    "fst_text",
    "in_vocabulary",
    "load_vocabulary",
]

log = logging.getLogger(__name__)

#: Compiled phrase sets a worker keeps (least recently used dropped first).
CACHE_SIZE = 64

#: Symbols of words.txt that are not words a phrase may use.
_RESERVED = ("<eps>", "<s>", "</s>", "!SIL", "<unk>", "[unk]")


class GrammarError(ValueError):
    """The phrases cannot be made into a grammar for this model (status 7)."""


@runtime_checkable
class Restrictable(Protocol):
    """An engine that can decode with a phrase-list grammar instead of dictation."""

    def restrict(self, grammar: str) -> None:
        """Decode every later utterance with ``grammar`` (FST text) only."""


def load_vocabulary(words_txt: Path) -> frozenset[str]:
    """The words a phrase may use: words.txt without epsilon, disambiguation symbols,
    nonterminals and silence."""
    words = set()
    with words_txt.open(encoding="utf-8") as f:
        for line in f:
            word = line.split(maxsplit=1)[0] if line.strip() else ""
            if word and not word.startswith("#") and word not in _RESERVED:
                words.add(word)
    return frozenset(words)


def digest(phrases: Iterable[str], *, skip_unknown: bool = False) -> str:
    """The cache key of a phrase set: order and duplicates do not change the grammar."""
    prefix = "skip-unknown\n" if skip_unknown else ""
    return hashlib.sha256((prefix + "\n".join(sorted(set(phrases)))).encode()).hexdigest()


def in_vocabulary(word: str, vocabulary: frozenset[str]) -> str | None:
    """``word`` as the model spells it: as written, else in capitals, else in small
    letters; ``None`` when the model has none of them."""
    for form in (word, word.upper(), word.lower()):
        if form in vocabulary:
            return form
    return None


def fst_text(phrases: Sequence[Sequence[str]]) -> str:
    """One path per phrase, words as symbols: a trie (phrases sharing a prefix share
    its states), deterministic, every phrase's last state final."""
    children: list[dict[str, int]] = [{}]
    finals: set[int] = set()
    arcs: list[str] = []
    for words in phrases:
        state = 0
        for word in words:
            target = children[state].get(word)
            if target is None:
                target = len(children)
                children.append({})
                children[state][word] = target
                arcs.append(f"{state} {target} {word} {word}")
            state = target
        finals.add(state)
    return "\n".join([*arcs, *map(str, sorted(finals))]) + "\n"


class GrammarCompiler:
    """Phrase lists -> grammar FST text for one model, with an LRU cache.

    The vocabulary (half a million words for the default model) is read on first use,
    in a thread, so a worker that never sees a phrase list never pays for it.
    """

    def __init__(self, words_txt: Path, *, supported: bool = True) -> None:
        self._words_txt = words_txt
        self._supported = supported
        self._vocabulary: frozenset[str] | None = None
        self._lock = asyncio.Lock()
        self._cache: OrderedDict[str, str] = OrderedDict()

    async def compile(self, phrases: Sequence[str], *, skip_unknown: bool = False) -> str:
        """The grammar for ``phrases`` (cached); raises :class:`GrammarError`.

        ``skip_unknown``: drop words the model lacks (vosk-server's treatment) rather
        than refuse the list."""
        if not self._supported:
            raise GrammarError("Bad grammar: this model does not support phrase lists")
        try:
            normalised = parse_phrases(list(phrases), lenient=skip_unknown)
        except BadGrammar as exc:
            raise GrammarError(str(exc)) from exc
        key = digest(normalised, skip_unknown=skip_unknown)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        vocabulary = await self._load()
        text = self.compile_with(normalised, vocabulary, skip_unknown=skip_unknown)
        self._cache[key] = text
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return text

    @staticmethod
    def compile_with(
        phrases: Sequence[str], vocabulary: frozenset[str], *, skip_unknown: bool = False
    ) -> str:
        split: list[list[str]] = []
        dropped: dict[str, None] = {}
        for phrase in phrases:
            words: list[str] = []
            for word in phrase.split():
                known = in_vocabulary(word, vocabulary)
                if known is not None:
                    words.append(known)
                elif skip_unknown:
                    dropped[word] = None
                else:
                    raise GrammarError(
                        f"Bad grammar: word {word!r} (in phrase {phrase!r}) "
                        "is not in the model's vocabulary"
                    )
            if words and words not in split:
                split.append(words)
        missing = ", ".join(repr(word) for word in dropped)
        if not split:
            raise GrammarError(
                f"Bad grammar: no phrase is left: the model's vocabulary lacks {missing}"
            )
        if dropped:
            log.warning("phrase list: ignoring words missing in the vocabulary: %s", missing)
        return fst_text(split)

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def _load(self) -> frozenset[str]:
        async with self._lock:
            if self._vocabulary is None:
                self._vocabulary = await asyncio.to_thread(load_vocabulary, self._words_txt)
            return self._vocabulary
