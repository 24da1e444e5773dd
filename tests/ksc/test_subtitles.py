"""Cutting finals into subtitle cues (pure logic): the bounds, the cuts, the fallback;
and ``ksc transcribe``'s subtitles from a session's finals."""

from __future__ import annotations

import itertools
import random
import unicodedata

import pytest
import srt as srt_parser

from ksc.client import Transcript
from ksc.subtitles import Cue, Rules, Utterance, Word, cut, srt, vtt
from ksc.transcribe import render, utterances

RULES = Rules()
SYLLABLES = "가나다라마바사아자차카타파하너더러머버서어저처커터퍼허는은를을이가에서요다니"


def timed(*spec: tuple[str, float, float]) -> tuple[Word, ...]:
    return tuple(Word(text, start, end) for text, start, end in spec)


def spoken(texts: list[str], start: float = 0.0, per_char: float = 0.1, gaps=None):  # type: ignore[no-untyped-def]
    """An aligned utterance: each word ``per_char`` s a syllable, ``gaps[i]`` after word i."""
    gaps = gaps or {}
    words, t = [], start
    for i, text in enumerate(texts):
        words.append(Word(text, t, t + per_char * len(text)))
        t = words[-1].end + gaps.get(i, 0.0)
    return Utterance(" ".join(texts), start, t, tuple(words))


def check_bounds(cues: list[Cue], rules: Rules = RULES) -> None:
    for cue in cues:
        assert 1 <= len(cue.lines) <= rules.max_lines, cue
        assert all(0 < len(line) <= rules.max_chars for line in cue.lines), cue
        assert all(line == line.strip() and "  " not in line for line in cue.lines), cue
        assert 0 <= cue.start <= cue.end <= cue.start + rules.max_seconds + 1e-9, cue
    for before, after in itertools.pairwise(cues):
        assert before.end <= after.start + 1e-9, (before, after)


def words_of(cues: list[Cue]) -> list[str]:
    return [w for cue in cues for line in cue.lines for w in line.split()]


# ------------------------------------------------------------------ the rules at work


def test_a_final_that_fits_is_one_cue_with_its_words_times() -> None:
    u = Utterance(
        "안녕하세요 반갑습니다",
        0.0,
        2.0,
        timed(("안녕하세요", 0.31, 0.9), ("반갑습니다", 1.0, 1.72)),
    )
    assert cut([u]) == [Cue(0.31, 1.72, ("안녕하세요 반갑습니다",))]


def test_a_long_final_is_cut_at_its_pause() -> None:
    """Twelve words of 3 syllables (0.3 s each, 47 characters): too long for one line of
    42, short enough for two; but 0.6 s of silence after word 7 and 8 s in all make two
    cues, cut exactly there rather than anywhere the characters would allow."""
    texts = [f"{SYLLABLES[i]}{SYLLABLES[i + 1]}{SYLLABLES[i + 2]}" for i in range(12)]
    u = spoken(texts, start=10.0, per_char=0.2, gaps={6: 0.6})
    cues = cut([u])
    assert [len(c.lines) for c in cues] == [1, 1]
    assert words_of(cues[:1]) == texts[:7] and words_of(cues[1:]) == texts[7:]
    assert cues[0].start == 10.0 and cues[0].end == pytest.approx(u.words[6].end)
    assert cues[1].start == pytest.approx(u.words[7].start)
    assert cues[1].end == pytest.approx(u.end)


def test_without_a_pause_the_cut_is_balanced() -> None:
    texts = ["가나다"] * 20  # 79 characters, 12 s of unbroken speech
    cues = cut([spoken(texts, per_char=0.2)])
    assert [len(words_of([c])) for c in cues] == [10, 10]
    check_bounds(cues)


def test_the_longest_pause_wins_among_possible_cuts() -> None:
    texts = ["하나", "둘", "셋", "넷", "다섯", "여섯", "일곱", "여덟"]
    u = spoken(texts, per_char=0.5, gaps={2: 0.1, 4: 0.5, 5: 0.2})  # 11.3 s
    cues = cut([u])
    assert [words_of([c]) for c in cues] == [texts[:5], texts[5:]]


def test_every_final_starts_a_cue() -> None:
    a = Utterance("네", 1.0, 1.3, timed(("네", 1.0, 1.3)))
    b = Utterance("알겠습니다", 1.9, 2.8, timed(("알겠습니다", 2.0, 2.8)))
    cues = cut([a, b])
    assert [c.lines for c in cues] == [("네",), ("알겠습니다",)]
    # A lone short word stays up for as long as the next cue leaves room (here 0.7 s of
    # the 1 s wanted); the last one gets its whole second.
    assert (cues[0].start, cues[0].end) == (1.0, 2.0)
    assert (cues[1].start, cues[1].end) == (2.0, 3.0)


def test_two_lines_balanced_top_line_shorter_on_a_tie() -> None:
    texts = ["가나다라마"] * 9  # 53 characters: two lines
    cues = cut([spoken(texts, per_char=0.1)])
    assert len(cues) == 1
    top, bottom = cues[0].lines
    assert (len(top), len(bottom)) == (23, 29)  # 4 words over 5: the shorter on top


def test_korean_width_is_counted_in_characters_of_nfc_text() -> None:
    """42 syllables fit one line; decomposed jamo (NFD, three code points a syllable)
    are composed first, so the same text still counts 42."""
    line = "가" * 20 + " " + "나" * 21
    nfd = unicodedata.normalize("NFD", line)
    assert len(nfd) > 42
    for text in (line, nfd):
        cues = cut([Utterance(text, 0.0, 3.0)])
        assert [c.lines for c in cues] == [(unicodedata.normalize("NFC", text),)]
    wider = "가" * 21 + " " + "나" * 21  # 43: two lines
    assert cut([Utterance(wider, 0.0, 3.0)])[0].lines == ("가" * 21, "나" * 21)


def test_without_word_times_a_final_is_split_in_proportion_to_its_characters() -> None:
    u = Utterance("가나다라 마바사아 자차카타 파하가나", 2.0, 16.0)  # 14 s, 4 words
    cues = cut([u])
    assert [c.lines for c in cues] == [("가나다라 마바사아",), ("자차카타 파하가나",)]
    assert [(c.start, c.end) for c in cues] == [(2.0, 9.0), (9.0, 16.0)]


def test_words_that_do_not_spell_the_transcript_are_not_used() -> None:
    """A post-processor rewrote the text: the segment times are used instead."""
    u = Utterance(
        "오늘은 3월 1일입니다",
        0.0,
        3.0,
        timed(("오늘은", 0.5, 0.9), ("삼월", 1.0, 1.4), ("일일", 1.5, 1.9), ("입니다", 2.0, 2.4)),
    )
    assert cut([u]) == [Cue(0.0, 3.0, ("오늘은 3월 1일입니다",))]


def test_a_word_longer_than_a_line_is_split_into_pieces() -> None:
    word = "가" * 100
    cues = cut([Utterance(word, 0.0, 5.0, timed((word, 0.0, 5.0)))])
    check_bounds(cues)
    assert "".join("".join(c.lines) for c in cues) == word


def test_a_word_longer_than_a_cue_is_shown_at_most_the_longest_cue() -> None:
    cues = cut([Utterance("음", 1.0, 12.0, timed(("음", 1.0, 11.0)))])
    assert cues == [Cue(1.0, 8.0, ("음",))]


def test_overlapping_or_backwards_times_never_make_cues_overlap() -> None:
    a = Utterance("가 나", 0.0, 2.0, timed(("가", 0.5, 1.5), ("나", 1.2, 1.1)))
    b = Utterance("다", 1.0, 2.0, timed(("다", 1.0, 1.8)))
    cues = cut([a, b])
    check_bounds(cues)
    assert words_of(cues) == ["가", "나", "다"]


def test_empty_finals_give_no_cue() -> None:
    assert cut([Utterance("", 0.0, 1.0), Utterance("   ", 1.0, 2.0)]) == []


def test_rules_are_checked() -> None:
    with pytest.raises(ValueError):
        Rules(max_chars=0)
    with pytest.raises(ValueError):
        Rules(min_seconds=8.0, max_seconds=7.0)


# ------------------------------------------------------------------ invariants, at random


def _random_utterances(rng: random.Random) -> list[Utterance]:
    out, t = [], rng.uniform(0, 3)
    for _ in range(rng.randint(1, 6)):
        texts = [
            "".join(rng.choice(SYLLABLES) for _ in range(rng.choice([1, 1, 2, 3, 3, 4, 5, 9])))
            for _ in range(rng.randint(1, 60))
        ]
        if rng.random() < 0.02:
            texts.append("가" * rng.randint(43, 120))  # longer than a line
        start = t
        words = []
        for text in texts:
            t += rng.choice([0.0, 0.0, 0.01, 0.05, 0.2, 0.4, 1.0])
            length = rng.uniform(0.05, 0.25) * len(text) * rng.choice([1, 1, 1, 6])
            words.append(Word(text, t, t + length))
            t += length
        aligned = rng.random() < 0.7
        out.append(Utterance(" ".join(texts), start, t, tuple(words) if aligned else ()))
        t += rng.uniform(0.3, 3)
    return out


@pytest.mark.parametrize(
    "rules", [Rules(), Rules(max_chars=16, max_lines=3, max_seconds=3.0, pause=0.1)]
)
def test_invariants_hold_for_random_finals(rules: Rules) -> None:
    """Bounds always hold; every word comes out once, in order, unsplit (unless longer
    than a line); times never go back; each cue lies within its final's audio."""
    rng = random.Random(15)
    for _ in range(300):
        utterances = _random_utterances(rng)
        cues = cut(utterances, rules)
        check_bounds(cues, rules)
        pieces = [
            w[i : i + rules.max_chars]
            for u in utterances
            for w in u.text.split()
            for i in range(0, len(w), rules.max_chars)
        ]
        assert words_of(cues) == pieces
        first, last = utterances[0], utterances[-1]
        assert cues[0].start >= min([first.start, *(w.start for w in first.words)]) - 1e-9
        assert cues[-1].end <= max([last.end, *(w.end for w in last.words)]) + rules.min_seconds


# ------------------------------------------------------------------ the file formats


def test_srt_and_vtt_are_read_back_by_an_independent_parser() -> None:
    rng = random.Random(7)
    cues = cut(_random_utterances(rng))
    parsed = list(srt_parser.parse(srt(cues)))
    assert [p.content for p in parsed] == [c.text for c in cues]
    assert [p.start.total_seconds() for p in parsed] == pytest.approx(
        [c.start for c in cues], abs=5e-4
    )
    assert [p.end.total_seconds() for p in parsed] == pytest.approx([c.end for c in cues], abs=5e-4)
    text = vtt(cues)
    assert text.startswith("WEBVTT\n\n") and text.count(" --> ") == len(cues)


def test_vtt_escapes_markup() -> None:
    cue = Cue(0.0, 1.0, ("a < b & c -->",))
    assert vtt([cue]) == "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na &lt; b &amp; c --&gt;\n\n"
    assert srt([cue]) == "1\n00:00:00,000 --> 00:00:01,000\na < b & c -->\n\n"


# ------------------------------------------------------------------ from a session's finals


def _final(segment: int, start: float, length: float, words: list[tuple[str, float, float]]):  # type: ignore[no-untyped-def]
    """A kaldi-gstreamer-server final with ``word-alignment`` (start, length)."""
    return {
        "status": 0,
        "id": "s",
        "segment": segment,
        "segment-start": start,
        "segment-length": length,
        "total-length": start + length,
        "result": {
            "final": True,
            "hypotheses": [
                {
                    "transcript": " ".join(w for w, _, _ in words),
                    "likelihood": 1.0,
                    "word-alignment": [
                        {"word": w, "start": s, "length": e - s, "confidence": 1.0}
                        for w, s, e in words
                    ],
                }
            ],
        },
    }


def test_ksc_transcribe_cuts_a_long_final_at_its_pause() -> None:
    """One 10 s final (as the endpointer leaves a talk without long silences): two cues,
    cut at the 0.5 s pause, each timed by its own words."""
    first = [(f"첫째{i}", 0.5 + 0.45 * i, 0.9 + 0.45 * i) for i in range(10)]  # to 4.95 s
    second = [(f"둘째{i}", 5.4 + 0.45 * i, 5.8 + 0.45 * i) for i in range(10)]  # to 9.85 s
    result = Transcript(messages=[_final(0, 0.2, 9.9, first + second)])
    text = render(result, "srt")
    parsed = list(srt_parser.parse(text))
    assert [p.content for p in parsed] == [
        " ".join(w for w, _, _ in first),
        " ".join(w for w, _, _ in second),
    ]
    assert [(p.start.total_seconds(), p.end.total_seconds()) for p in parsed] == [
        (0.5, 4.95),
        (5.4, 9.85),
    ]
    assert render(result, "vtt").startswith("WEBVTT\n\n00:00:00.500 --> 00:00:04.950\n첫째0 ")


def test_utterances_read_word_alignment_and_ignore_a_malformed_one() -> None:
    good = _final(0, 1.0, 2.0, [("안녕", 1.25, 1.5), ("하세요", 1.5, 2.0)])
    bad = _final(1, 3.0, 1.0, [("네", 3.1, 3.4)])
    del bad["result"]["hypotheses"][0]["word-alignment"][0]["length"]
    plain = _final(2, 5.0, 1.0, [("예", 5.2, 5.5)])
    del plain["result"]["hypotheses"][0]["word-alignment"]
    got = utterances(Transcript(messages=[good, bad, plain]))
    assert got[0] == Utterance(
        "안녕 하세요", 1.0, 3.0, timed(("안녕", 1.25, 1.5), ("하세요", 1.5, 2.0))
    )
    assert got[1] == Utterance("네", 3.0, 4.0)
    assert got[2] == Utterance("예", 5.0, 6.0)


def test_a_url_that_names_no_gateway_is_a_usage_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from ksc.transcribe import EXIT_USAGE, run, run_batch

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    assert run([str(wav)], "ftp://h:8888", "text", None, realtime=False) == EXIT_USAGE
    assert run_batch([str(wav)], "redis://h:6379", "srt", None) == EXIT_USAGE
    assert "not a ws://, wss://, http:// or https:// URL" in capsys.readouterr().err


def test_a_batch_jobs_word_times_reach_the_subtitles() -> None:
    """``--batch``: the job document's words (start and end) become the finals'
    ``word-alignment``, so batch subtitles are cut like streamed ones."""
    from ksc.batch_client import as_transcript

    words = [
        {"word": "안녕", "start": 0.25, "end": 0.5},
        {"word": "하세요", "start": 0.5, "end": 1.0},
    ]
    doc = {
        "id": "job",
        "duration": 4.0,
        "segments": [
            {"segment": 0, "start": 0.0, "length": 1.5, "text": "안녕 하세요", "likelihood": 1.0}
            | {"words": words},
            {"segment": 1, "start": 2.0, "length": 1.0, "text": "네", "likelihood": 1.0}
            | {"words": None},
            {"segment": 2, "start": 3.0, "length": 1.0, "text": "예", "likelihood": 1.0},
        ],
    }
    assert utterances(as_transcript(doc)) == [
        Utterance("안녕 하세요", 0.0, 1.5, timed(("안녕", 0.25, 0.5), ("하세요", 0.5, 1.0))),
        Utterance("네", 2.0, 3.0),
        Utterance("예", 3.0, 4.0),
    ]
