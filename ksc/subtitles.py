"""Subtitle cues from finals, cut at pauses and word boundaries (pure: no I/O).

``ksc transcribe --format srt|vtt`` turns each final into an :class:`Utterance` (its
text, its segment times and, when the server aligned it, each word's times) and
:func:`cut` turns those into cues a viewer can read:

- a cue holds at most ``max_lines`` lines (2) of at most ``max_chars`` characters (42),
  and lasts at most ``max_seconds`` (7 s): the usual broadcast and streaming limits.
  Characters are Unicode code points of NFC text, so a Hangul syllable counts as one,
  like a Latin letter (Korean subtitle guidelines count syllables the same way);
- every final starts a new cue: its end is a pause the endpointer found;
- within a final a cue ends only between words, preferably at a pause: a gap between
  two words of at least ``pause`` seconds costs nothing to cut at, a shorter one costs
  more the shorter it is. Among the cuttings within the limits the cheapest wins (fewest
  cues, cuts at pauses, cues filled evenly); a final that fits in one cue stays one;
- a cue's lines are balanced (the fewest lines that fit, then as even as possible, the
  top line the shorter on a tie);
- a cue runs from its first word's start to its last word's end, lengthened to
  ``min_seconds`` (1 s) when the next cue leaves room, so a lone short word stays
  readable; cues never overlap.

A final without word times (the server could not align it, an older server, or a
post-processor changed the text so that the words no longer spell it) falls back to its
segment times: when its text exceeds the limits it is cut between words as above, each
word given a share of the segment's time in proportion to its characters. A single word
longer than a line (never seen in Korean output) is split into line-sized pieces.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Cue", "Rules", "Utterance", "Word", "cut", "srt", "vtt"]


@dataclass(frozen=True)
class Word:
    """One word and its times, in seconds from the start of the stream."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Utterance:
    """One final: its transcript, its segment's times, its words' times if aligned."""

    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True)
class Rules:
    """The limits of a cue, and what counts as a pause between words."""

    max_chars: int = 42
    max_lines: int = 2
    max_seconds: float = 7.0
    min_seconds: float = 1.0
    pause: float = 0.3

    def __post_init__(self) -> None:
        if self.max_chars < 1 or self.max_lines < 1:
            raise ValueError("a cue needs at least one line of one character")
        if not 0 < self.min_seconds <= self.max_seconds or self.pause <= 0:
            raise ValueError("need 0 < min_seconds <= max_seconds and pause > 0")


# What a cutting costs: each cue, each cut inside a final (by how short its pause is),
# and each cue's unused room (squared, so that cues come out evenly filled). A cut
# with no pause at all costs two cues: a pause is worth an extra cue, and more.
_CUE_COST = 1.0
_TIGHT_CUT_COST = 2.0
_EMPTY_ROOM_COST = 0.5


def cut(utterances: Iterable[Utterance], rules: Rules = Rules()) -> list[Cue]:
    """The cues for ``utterances`` (in stream order), within ``rules``."""
    cues: list[Cue] = []
    for utterance in utterances:
        tokens = _fit_tokens(_tokens(utterance), rules.max_chars)
        cues += [_cue(group, rules) for group in _partition(tokens, rules)]
    return _settle(cues, rules)


# ------------------------------------------------------------------ words of a final


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _tokens(utterance: Utterance) -> list[Word]:
    """The final's words with times: its aligned words when they spell its text, else
    its text's words spread over the segment in proportion to their characters."""
    words = [
        Word(_nfc(w.text).strip(), w.start, w.end) for w in utterance.words if _nfc(w.text).strip()
    ]
    text_words = _nfc(utterance.text).split()
    spelled = "".join(text_words) == "".join("".join(w.text.split()) for w in words)
    if words and spelled and all(math.isfinite(w.start) and math.isfinite(w.end) for w in words):
        return _monotonic([Word(w2, w.start, w.end) for w in words for w2 in w.text.split()])
    return _spread(text_words, utterance.start, utterance.end)


def _spread(texts: Sequence[str], start: float, end: float) -> list[Word]:
    """Words laid end to end from ``start`` to ``end``, each in proportion to its length."""
    start = start if math.isfinite(start) else 0.0
    end = max(start, end if math.isfinite(end) else start)
    total = sum(len(t) for t in texts)
    words, done = [], 0
    for text in texts:
        begin = start + (end - start) * done / total
        done += len(text)
        words.append(Word(text, begin, start + (end - start) * done / total))
    return words


def _monotonic(words: list[Word]) -> list[Word]:
    """Times that never go back: a word starts no earlier than the previous one ended
    (alignments round to frames; a bad one must not make cues overlap)."""
    out: list[Word] = []
    floor = -math.inf
    for w in words:
        start = max(w.start, floor)
        end = max(w.end, start)
        out.append(Word(w.text, start, end))
        floor = end
    return out


def _fit_tokens(words: list[Word], max_chars: int) -> list[Word]:
    """Words longer than a line split into line-sized pieces, times shared by length."""
    out: list[Word] = []
    for w in words:
        if len(w.text) <= max_chars:
            out.append(w)
            continue
        pieces = [w.text[i : i + max_chars] for i in range(0, len(w.text), max_chars)]
        out += _spread(pieces, w.start, w.end)
    return out


# ------------------------------------------------------------------ cues of a final


def _line_count(texts: Sequence[str], max_chars: int) -> int:
    """How many lines the words need, filled greedily (greedy needs the fewest)."""
    lines, width = 1, -1
    for text in texts:
        if width >= 0 and width + 1 + len(text) > max_chars:
            lines, width = lines + 1, len(text)
        else:
            width += 1 + len(text)
    return lines


def _partition(tokens: list[Word], rules: Rules) -> list[list[Word]]:
    """The cheapest cutting of one final's words into cues within the limits.

    Dynamic programming over cut positions: ``best[j]`` is the cheapest cutting of the
    first ``j`` words. A cue of one word always fits (words are at most a line long),
    so there is always a cutting.
    """
    n = len(tokens)
    if n == 0:
        return []
    room = rules.max_lines * rules.max_chars
    best = [0.0] + [math.inf] * n
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        chars = -1
        for i in range(j - 1, -1, -1):
            chars += 1 + len(tokens[i].text)
            seconds = tokens[j - 1].end - tokens[i].start
            if i < j - 1 and (chars > room + rules.max_lines - 1 or seconds > rules.max_seconds):
                break
            if _line_count([t.text for t in tokens[i:j]], rules.max_chars) > rules.max_lines:
                break
            fill = min(1.0, max(chars / room, seconds / rules.max_seconds))
            cost = best[i] + _CUE_COST + _EMPTY_ROOM_COST * (1.0 - fill) ** 2
            if i > 0:
                gap = tokens[i].start - tokens[i - 1].end
                cost += _TIGHT_CUT_COST * max(0.0, 1.0 - gap / rules.pause)
            if cost < best[j]:
                best[j], back[j] = cost, i
    groups: list[list[Word]] = []
    j = n
    while j > 0:
        groups.append(tokens[back[j] : j])
        j = back[j]
    return groups[::-1]


def _cue(words: list[Word], rules: Rules) -> Cue:
    start = words[0].start
    end = min(words[-1].end, start + rules.max_seconds)
    return Cue(start, end, _balanced([w.text for w in words], rules.max_chars))


def _balanced(texts: Sequence[str], max_chars: int) -> tuple[str, ...]:
    """The words in the fewest lines of at most ``max_chars``, as even as possible
    (least sum of squared line lengths), the upper line the shorter on a tie."""
    k = _line_count(texts, max_chars)
    n = len(texts)

    def width(i: int, j: int) -> int:
        return sum(len(t) for t in texts[i:j]) + (j - i - 1)

    # best[l][j]: the best l lines holding the first j words, as (sum of squared
    # widths, where each line ends); on equal sums the earlier first break wins.
    none: tuple[float, tuple[int, ...]] = (math.inf, ())
    best = [[none] * (n + 1) for _ in range(k + 1)]
    best[0][0] = (0.0, ())
    for lines in range(1, k + 1):
        for j in range(1, n + 1):
            for i in range(j - 1, -1, -1):
                w = width(i, j)
                if w > max_chars:
                    break
                squares, ends = best[lines - 1][i]
                best[lines][j] = min(best[lines][j], (squares + w * w, (*ends, j)))
    out, at = [], 0
    for end in best[k][n][1]:
        out.append(" ".join(texts[at:end]))
        at = end
    return tuple(out)


# ------------------------------------------------------------------ all cues


def _settle(cues: list[Cue], rules: Rules) -> list[Cue]:
    """No cue before the end of the one before it; a short cue lengthened to
    ``min_seconds`` where the next one leaves room."""
    out: list[Cue] = []
    floor = 0.0
    for cue in cues:
        start = max(cue.start, floor)
        out.append(Cue(start, max(cue.end, start), cue.lines))
        floor = out[-1].end
    for i, cue in enumerate(out):
        limit = out[i + 1].start if i + 1 < len(out) else math.inf
        want = cue.start + rules.min_seconds
        if cue.end < want:
            out[i] = Cue(cue.start, max(cue.end, min(want, limit)), cue.lines)
    return out


# ------------------------------------------------------------------ file formats


def _clock(seconds: float, sep: str) -> str:
    ms = round(max(0.0, seconds) * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(cues: Sequence[Cue]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times."""
    return "".join(
        f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{c.text}\n\n"
        for i, c in enumerate(cues, 1)
    )


def vtt(cues: Sequence[Cue]) -> str:
    """WebVTT: ``HH:MM:SS.mmm`` times, the text's ``&``, ``<`` and ``>`` escaped."""
    body = "".join(
        f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{_escape(c.text)}\n\n" for c in cues
    )
    return "WEBVTT\n\n" + body


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
