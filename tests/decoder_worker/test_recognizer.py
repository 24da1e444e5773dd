"""The recogniser: numbering and throttling with a fake engine, then the real engine."""

from __future__ import annotations

import re
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from decoder_worker.engine import Decoded, KagEngine
from decoder_worker.model import EndpointRules, PreparedModel
from decoder_worker.recognizer import Final, Partial, Recognizer

from .conftest import TESTDATA

RATE = 16000
RULES = EndpointRules()


def read_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        return bytes(w.readframes(w.getnframes()))


def noise(seconds: float, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 30, int(seconds * RATE)).astype(np.int16).tobytes()


class FakeEngine:
    """Scripted finals; the partial is the number of samples accepted so far."""

    sample_rate = RATE

    def __init__(self, finals: list[str], partial_changes: bool = True) -> None:
        self.finals = list(finals)
        self.partial_changes = partial_changes
        self.accepted = 0
        self.utterances: list[int] = []

    def accept(self, pcm: bytes) -> None:
        assert len(pcm) % 2 == 0
        self.accepted += len(pcm) // 2

    def partial(self) -> str:
        return f"p{self.accepted}" if self.partial_changes else "same"

    def finish(self) -> Decoded:
        self.utterances.append(self.accepted)
        self.accepted = 0
        return Decoded(self.finals.pop(0), -1.5)


def three_utterances(speech: bytes) -> bytes:
    return noise(0.5) + speech + noise(2.0, 2) + speech + noise(2.0, 3) + speech + noise(2.0, 4)


def feed_all(rec: Recognizer, pcm: bytes, chunk: int = 3201) -> list[Partial | Final]:
    events: list[Partial | Final] = []
    for i in range(0, len(pcm), chunk):
        events += rec.feed(pcm[i : i + chunk])
    return events + rec.end()


def test_numbering_skips_empty_segments(espeak_clip: Path) -> None:
    engine = FakeEngine(["하나", "", "셋"])
    rec = Recognizer(engine, RULES, first_segment=7)
    finals = [
        e for e in feed_all(rec, three_utterances(read_pcm(espeak_clip))) if isinstance(e, Final)
    ]
    assert [(f.segment, f.text) for f in finals] == [(7, "하나"), (8, "셋")]
    assert len(engine.utterances) == 3
    assert finals[0].start < finals[1].start
    assert finals[0].start + finals[0].length <= finals[1].start
    assert finals[-1].start + finals[-1].length <= finals[-1].total <= rec.samples_received / RATE
    assert finals[0].likelihood == -1.5


def test_only_speech_reaches_the_engine(espeak_clip: Path) -> None:
    speech = read_pcm(espeak_clip)
    pcm = three_utterances(speech)
    engine = FakeEngine(["a", "b", "c"])
    feed_all(Recognizer(engine, RULES), pcm)
    fed = sum(engine.utterances)
    assert 3 * len(speech) // 2 <= fed < len(pcm) // 2


def test_partials_are_throttled_and_numbered(espeak_clip: Path) -> None:
    speech = read_pcm(espeak_clip)
    pcm = noise(0.5) + speech + noise(2.0, 2)
    engine = FakeEngine(["x"])
    events = feed_all(Recognizer(engine, RULES, partial_interval=0.5, first_segment=3), pcm, 800)
    partials = [e for e in events if isinstance(e, Partial)]
    assert all(p.segment == 3 for p in partials)
    seconds_fed = engine.utterances[0] / RATE
    assert 1 <= len(partials) <= seconds_fed / 0.5 + 1
    assert isinstance(events[-1], Final)

    # An unchanged best path is sent again at every interval, as kaldi-gstreamer-server
    # does: a client sees the stream is being decoded while a long word is spoken.
    same = FakeEngine(["x"], partial_changes=False)
    events = feed_all(Recognizer(same, RULES, partial_interval=0.5), pcm, 800)
    repeated = [e for e in events if isinstance(e, Partial)]
    assert len(repeated) == len(partials) and set(repeated) == {Partial(0, "same")}


def test_resume_offsets_are_absolute(espeak_clip: Path) -> None:
    pcm = noise(0.5) + read_pcm(espeak_clip) + noise(2.0, 2)
    base = [e for e in feed_all(Recognizer(FakeEngine(["x"]), RULES), pcm) if isinstance(e, Final)]
    offset = 10 * RATE
    rec = Recognizer(FakeEngine(["x"]), RULES, offset_samples=offset, first_segment=4)
    assert rec.samples_received == offset
    moved = [e for e in feed_all(rec, pcm) if isinstance(e, Final)]
    assert moved[0].segment == 4
    assert moved[0].start == pytest.approx(base[0].start + 10)
    assert moved[0].total == pytest.approx(base[0].total + 10)
    assert rec.samples_received == offset + len(pcm) // 2


def test_open_segment_start_marks_the_replay_point(espeak_clip: Path) -> None:
    speech = read_pcm(espeak_clip)
    rec = Recognizer(FakeEngine(["x"]), RULES)
    rec.feed(noise(1.0))
    assert rec.samples_received - 0.6 * RATE <= rec.open_segment_start <= rec.samples_received
    rec.feed(speech[: len(speech) // 2])
    start = rec.open_segment_start
    assert 0.5 * RATE <= start <= 1.0 * RATE
    rec.feed(speech[len(speech) // 2 :])
    assert rec.open_segment_start == start


def test_real_engine_on_espeak(
    kag_engine: KagEngine, prepared_model: PreparedModel, espeak_clip: Path
) -> None:
    pcm = noise(0.5) + read_pcm(espeak_clip) + noise(1.5, 2)
    rec = Recognizer(kag_engine, prepared_model.endpoint, partial_interval=0.5)
    events = feed_all(rec, pcm, 4000)
    finals = [e for e in events if isinstance(e, Final)]
    assert len(finals) == 1
    assert re.search(r"[가-힣]", finals[0].text)
    assert finals[0].segment == 0
    partials = [e for e in events if isinstance(e, Partial)]
    assert partials and all(p.text for p in partials)


def test_real_clip_is_deterministic(reference_decode: Callable[..., list[Final]]) -> None:
    clips = sorted((TESTDATA / "clips").glob("*.wav"))
    if not clips:
        pytest.skip(f"no test clips under {TESTDATA}")
    pcm = read_pcm(clips[0])
    # Each utterance in a fresh fork of a never-used engine, as the cluster decodes:
    # KaG carries state from one utterance to the next (docs/engine.md), so only equal
    # starting states can be expected to give equal text.
    first = reference_decode(pcm)
    second = reference_decode(pcm, 3333)
    assert first and re.search(r"[가-힣]{2}", " ".join(f.text for f in first))
    assert first == second, "same audio, different chunking, same start state: same finals"
    assert [f.segment for f in first] == list(range(len(first)))


def test_engine_finish_without_audio_is_empty(kag_engine: KagEngine) -> None:
    kag_engine.accept(b"")
    assert kag_engine.partial() == ""
    assert kag_engine.finish() == Decoded("", 0.0)
