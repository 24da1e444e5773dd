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


def test_replay_point_is_the_start_of_the_first_segment(espeak_clip: Path) -> None:
    speech = read_pcm(espeak_clip)
    rec = Recognizer(FakeEngine(["x"]), RULES)
    rec.feed(noise(1.0))
    sample, segment = rec.replay_point
    assert rec.samples_received - 0.6 * RATE <= sample <= rec.samples_received
    assert segment == 0
    rec.feed(speech[: len(speech) // 2])
    start = rec.replay_point
    assert 0.5 * RATE <= start[0] <= 1.0 * RATE and start[1] == 0
    rec.feed(speech[len(speech) // 2 :])
    assert rec.replay_point == start


class EpochEngine:
    """A decoder whose text depends on what it decoded since it was last renewed, as
    kaldi-active-grammar's does: each final names its place in the epoch."""

    sample_rate = RATE

    def __init__(self) -> None:
        self.renewals = 0
        self._renew_state()

    def _renew_state(self) -> None:
        self.utterance = 0
        self.seen = 0

    def accept(self, pcm: bytes) -> None:
        self.seen += len(pcm) // 2

    def partial(self) -> str:
        return f"p{self.seen}"

    def finish(self) -> Decoded:
        self.utterance += 1
        return Decoded(f"u{self.utterance}", -1.0)

    def renew(self) -> None:
        self.renewals += 1
        self._renew_state()


def _utterances(speech: bytes, n: int) -> bytes:
    pcm = noise(0.5)
    for i in range(n):
        pcm += speech + noise(2.0, i + 2)
    return pcm


def test_epochs_renew_the_engine_and_hold_the_replay_point(espeak_clip: Path) -> None:
    speech = read_pcm(espeak_clip)
    pcm = _utterances(speech, 5)
    per_utterance = len(speech) // 2 + 2 * RATE
    # An epoch ends at the first segment end at least epoch_s after its start: here
    # after every second segment.
    epoch_s = 1.5 * per_utterance / RATE
    engine = EpochEngine()
    rec = Recognizer(engine, RULES, epoch_s=epoch_s, partial_interval=float("inf"))
    points: list[tuple[int, int]] = []
    finals: list[Final] = []
    for i in range(0, len(pcm), 4000):
        finals += [e for e in rec.feed(pcm[i : i + 4000]) if isinstance(e, Final)]
        points.append(rec.replay_point)
    finals += [e for e in rec.end() if isinstance(e, Final)]
    assert [f.text for f in finals] == ["u1", "u2", "u1", "u2", "u1"]
    assert engine.renewals == 2  # as segments 2 and 4 open a new epoch each
    # The replay point is an epoch's first segment: segments 0, 2 and 4 (and in the
    # gaps between epochs, the earliest start of the next segment).
    starts = {(round(f.start * RATE), f.segment) for f in finals}
    epoch_points = [p for p in points if p in starts]
    assert {p[1] for p in epoch_points} == {0, 2, 4}


def test_a_replay_from_any_reported_point_reproduces_what_follows(espeak_clip: Path) -> None:
    speech = read_pcm(espeak_clip)
    pcm = _utterances(speech, 5)
    epoch_s = 1.5 * (len(speech) // 2 + 2 * RATE) / RATE

    def run(offset: int, segment: int) -> tuple[list[Final], list[tuple[int, int]]]:
        rec = Recognizer(
            EpochEngine(),
            RULES,
            epoch_s=epoch_s,
            partial_interval=float("inf"),
            first_segment=segment,
            offset_samples=offset,
        )
        finals: list[Final] = []
        points = []
        for i in range(2 * offset, len(pcm), 4000):
            finals += [e for e in rec.feed(pcm[i : i + 4000]) if isinstance(e, Final)]
            points.append(rec.replay_point)
        finals += [e for e in rec.end() if isinstance(e, Final)]
        return finals, points

    def key(finals: list[Final]) -> list[tuple[int, str, float]]:
        # Not ``total`` (the audio received when the final went out follows the
        # chunking), nor ``length``: webrtcvad adapts to what it heard, so an
        # endpointer started mid-stream may end a segment a frame away.
        return [(f.segment, f.text, f.start) for f in finals]

    whole, points = run(0, 0)
    assert len(whole) == 5
    for sample, segment in sorted(set(points)):
        replayed, _ = run(sample, segment)
        expected = [f for f in whole if f.segment >= segment]
        assert key(replayed) == key(expected), (sample, segment)


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
