"""Word times: the word-id table, the recogniser's offsets, the fork that keeps a text
when alignment dies, and real alignment with the model's derived lexicon."""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from decoder_worker.alignment import WordIds
from decoder_worker.engine import Decoded, KagEngine, WordTime
from decoder_worker.forking import ForkingEngine
from decoder_worker.model import EndpointRules
from decoder_worker.recognizer import Final, Recognizer
from harness.media import pcm_of
from harness.speech import SENTENCE
from harness.word_times import MID_WORD_CUT_S

RATE = 16000


def test_word_ids_find_every_word_of_words_txt(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("<eps> 0\n불 5\n켜 7\n\n#nonterm:end 9\nZERO 11\n", encoding="utf-8")
    table = WordIds.read(words)
    assert len(table) == 5
    assert table.lookup("불") == [5] and table.lookup("#nonterm:end") == [9]
    assert table.lookup("켜") == [7] and table.lookup("없는") == []


class ScriptedEngine:
    """Finals with word times from the start of the utterance; an ``Aligning`` engine
    whose alignment can be told to take its process down."""

    sample_rate = RATE

    def __init__(self, die_aligning: bool = False) -> None:
        self.die_aligning = die_aligning
        self.accepted = 0

    def accept(self, pcm: bytes) -> None:
        self.accepted += len(pcm) // 2

    def partial(self) -> str:
        return ""

    def finalize(self) -> Decoded:
        return Decoded("불 켜", -1.0)

    def align(self, decoded: Decoded) -> Decoded:
        if self.die_aligning:
            faulthandler.disable()  # pytest's would print this fork's stack
            os.abort()  # what a failed assertion inside Kaldi does
        end = self.accepted / RATE
        words = (WordTime("불", 0.1, 0.4), WordTime("켜", 0.4, end))
        return Decoded(decoded.text, decoded.likelihood, words)

    def finish(self) -> Decoded:
        return self.align(self.finalize())


def test_a_text_survives_an_aligner_that_dies() -> None:
    engine = ForkingEngine(ScriptedEngine(die_aligning=True))
    engine.accept(b"\x00\x00" * 800)
    assert engine.finish() == Decoded("불 켜", -1.0, None, align_failed=True)
    healthy = ForkingEngine(ScriptedEngine())
    healthy.accept(b"\x00\x00" * 8000)
    decoded = healthy.finish()
    healthy.close()
    assert decoded.words == (WordTime("불", 0.1, 0.4), WordTime("켜", 0.4, 0.5))


def _noise(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 30, int(seconds * RATE)).astype(np.int16).tobytes()


def test_recognizer_moves_word_times_to_the_stream(espeak_clip: Path) -> None:
    """The engine counts from the utterance's first sample; finals from the stream's."""
    pcm = _noise(1.5, 1) + pcm_of(espeak_clip) + _noise(2.0, 2)
    rec = Recognizer(ScriptedEngine(), EndpointRules(), offset_samples=5 * RATE)
    events = rec.feed(pcm) + rec.end()
    (final,) = [e for e in events if isinstance(e, Final)]
    assert final.words is not None
    first, last = final.words
    assert first.start == pytest.approx(final.start + 0.1)
    assert last.end == pytest.approx(final.start + final.length)
    assert 5 + 1.0 < final.start < 5 + 1.5  # the pre-roll reaches into the noise


# --- real alignment ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def aligning_engine(kag_engine: KagEngine) -> KagEngine:
    if kag_engine.aligner is None:
        pytest.fail("the prepared model has no alignment lexicon (ksc model prepare)")
    return kag_engine


def test_real_words_have_times_inside_their_utterance(
    aligning_engine: KagEngine, espeak_wav: Callable[..., Path]
) -> None:
    pcm = pcm_of(espeak_wav("안녕하세요. 오늘은 날씨가 아주 좋습니다.", pad=False))
    engine = ForkingEngine(aligning_engine)
    engine.accept(pcm)
    decoded = engine.finish()
    engine.close()
    assert decoded.words is not None and not decoded.align_failed
    assert [w.word for w in decoded.words] == decoded.text.split()
    previous = 0.0
    for word in decoded.words:
        assert previous - 1e-9 <= word.start < word.end <= len(pcm) / 2 / RATE + 1e-9, word
        previous = word.end
    # KaG counts 30 ms frames (10 ms, subsampled by 3): every time is a multiple
    for word in decoded.words:
        assert round(word.start / 0.03, 6).is_integer(), word


def test_real_audio_cut_inside_a_word_gives_words_without_times(
    aligning_engine: KagEngine, espeak_wav: Callable[..., Path]
) -> None:
    """A lattice "forced out" by audio that ends mid-word cannot be aligned: the text
    stands, the times are missing, the failure is reported."""
    pcm = pcm_of(espeak_wav(SENTENCE, pad=False))
    engine = ForkingEngine(aligning_engine)
    engine.accept(pcm[: int(MID_WORD_CUT_S * RATE) * 2])
    decoded = engine.finish()
    engine.close()
    assert decoded.text and decoded.words is None and decoded.align_failed
