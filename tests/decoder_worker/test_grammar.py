"""Phrase-list grammars: FST text, validation, the cache, and real decoding with one."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from decoder_worker.engine import KagEngine
from decoder_worker.forking import ForkingEngine, fork_process
from decoder_worker.grammar import GrammarCompiler, GrammarError, digest, fst_text
from decoder_worker.model import PreparedModel
from decoder_worker.pipes import recv_frame, send_frame
from decoder_worker.recognizer import decode_pcm
from harness.speech import COMMANDS
from shared.protocol import MAX_PHRASE_WORDS, MAX_PHRASES, BadGrammar, parse_phrases
from shared.wire import SessionRequest


def test_fst_is_a_trie_with_one_path_per_phrase() -> None:
    text = fst_text([["불", "켜"], ["불", "꺼"], ["불"]])
    lines = text.splitlines()
    arcs = [line.split() for line in lines if len(line.split()) == 4]
    finals = sorted(int(line) for line in lines if len(line.split()) == 1)
    assert arcs == [["0", "1", "불", "불"], ["1", "2", "켜", "켜"], ["1", "3", "꺼", "꺼"]]
    assert finals == [1, 2, 3]


def test_phrases_are_normalised_and_bounded() -> None:
    assert parse_phrases(["  불   켜 ", "불 켜", "[unk]", "문"]) == ("불 켜", "문")
    # NFD jamo input becomes the precomposed syllables words.txt uses
    assert parse_phrases(["\u1107\u116e\u11af"]) == ("불",)
    for bad in ([], ["[unk]"], [""], "불 켜", [1], {"a": 1}, None):
        with pytest.raises(BadGrammar):
            parse_phrases(bad)
    with pytest.raises(BadGrammar, match="at most"):
        parse_phrases([f"w{i}" for i in range(MAX_PHRASES + 1)])
    with pytest.raises(BadGrammar, match="words"):
        parse_phrases([" ".join(["불"] * (MAX_PHRASE_WORDS + 1))])


def test_digest_ignores_order_and_duplicates() -> None:
    assert digest(["a", "b"]) == digest(["b", "a", "a"]) != digest(["a"])


def test_unknown_word_is_named() -> None:
    vocab = frozenset({"불", "켜"})
    with pytest.raises(GrammarError, match="'꺼'"):
        GrammarCompiler.compile_with(["불 켜", "불 꺼"], vocab)


def test_vosk_treatment_drops_unknown_words_and_keeps_the_rest() -> None:
    """vosk-server drops words its model lacks and keeps the rest; a list left with no
    phrase is refused (status 7) naming what was missing."""
    vocab = frozenset({"불", "켜", "ZERO", "ONE"})
    text = GrammarCompiler.compile_with(
        ["불 꺼", "불 켜", "꺼", "zero one"], vocab, skip_unknown=True
    )
    assert text == fst_text([["불"], ["불", "켜"], ["ZERO", "ONE"]])
    with pytest.raises(GrammarError, match=r"no phrase is left.*'꺼'"):
        GrammarCompiler.compile_with(["꺼", "꺼 꺼"], vocab, skip_unknown=True)


def test_a_word_is_found_in_the_models_case() -> None:
    """The default model spells Latin-script words in capitals (``ZERO``)."""
    vocab = frozenset({"ZERO", "ONE"})
    assert GrammarCompiler.compile_with(["zero One"], vocab) == fst_text([["ZERO", "ONE"]])


async def test_compiler_caches_per_phrase_set(prepared_model: PreparedModel) -> None:
    compiler = GrammarCompiler(prepared_model.path / "words.txt")
    first = await compiler.compile(COMMANDS)
    again = await compiler.compile(list(reversed(COMMANDS)) + COMMANDS[:2])
    assert compiler.cached == 1
    assert first == again
    with pytest.raises(GrammarError, match="xyzzyq"):
        await compiler.compile(["불 xyzzyq"])
    assert compiler.cached == 1
    assert await compiler.compile(["불 xyzzyq"], skip_unknown=True) == fst_text([["불"]])
    assert compiler.cached == 2
    refused = GrammarCompiler(prepared_model.path / "words.txt", supported=False)
    with pytest.raises(GrammarError, match="does not support"):
        await refused.compile(COMMANDS)


def _decode_with(engine: KagEngine, rules: object, grammar: str | None, pcm: bytes) -> str:
    """Decode in a fork (as a session process does), so the shared engine stays pristine."""

    def child(sock: object) -> None:
        if grammar is not None:
            engine.restrict(grammar)
        finals = decode_pcm(ForkingEngine(engine), rules, pcm)  # type: ignore[arg-type]
        send_frame(sock, " ".join(f.text for f in finals))  # type: ignore[arg-type]

    pid, sock = fork_process(child)
    try:
        return str(recv_frame(sock))
    finally:
        sock.close()
        os.waitpid(pid, 0)


def test_grammar_restricts_real_decoding(
    kag_engine: KagEngine,
    prepared_model: PreparedModel,
    espeak_wav: Callable[..., Path],
) -> None:
    wav = espeak_wav("음악 틀어")
    pcm = subprocess.run(
        ["sox", str(wav), "-t", "raw", "-"], check=True, capture_output=True
    ).stdout
    grammar = GrammarCompiler.compile_with(
        parse_phrases(COMMANDS),
        frozenset(w for p in COMMANDS for w in p.split()),
    )
    restricted = _decode_with(kag_engine, prepared_model.endpoint, grammar, pcm)
    dictation = _decode_with(kag_engine, prepared_model.endpoint, None, pcm)
    assert restricted == "음악 틀어"
    assert dictation != restricted


def test_session_request_carries_phrases_compatibly() -> None:
    plain = SessionRequest("s", "ko", 1.5)
    assert "phrases" not in plain.serialize()  # what older workers read unchanged
    fields = {k.encode(): v.encode() for k, v in plain.serialize().items()}
    assert SessionRequest.parse(fields).phrases == ()
    restricted = SessionRequest("s", "ko", 1.5, phrases=("불 켜", "음악 틀어"))
    fields = {k.encode(): v.encode() for k, v in restricted.serialize().items()}
    assert SessionRequest.parse(fields) == restricted
    assert "skip_unknown_words" not in restricted.serialize()
    lenient = SessionRequest("s", "ko", 1.5, phrases=("불 켜",), skip_unknown_words=True)
    fields = {k.encode(): v.encode() for k, v in lenient.serialize().items()}
    assert SessionRequest.parse(fields) == lenient
