"""The VAD endpointer on synthetic and real speech (pure logic, no Kaldi)."""

from __future__ import annotations

import itertools
import random
import wave
from pathlib import Path

import numpy as np
import pytest

from decoder_worker.endpoint import Endpointer, SpeechEnd, SpeechEvent, SpeechStart
from decoder_worker.model import EndpointRules

from .conftest import TESTDATA

RATE = 16000
RULES = EndpointRules()


def read_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        return bytes(w.readframes(w.getnframes()))


def noise(seconds: float, seed: int = 1, level: float = 30.0) -> bytes:
    """Quiet background noise rather than digital zeros, as real silence is."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, level, int(seconds * RATE))).astype(np.int16).tobytes()


def run(
    pcm: bytes, rules: EndpointRules = RULES, chunks: list[int] | None = None
) -> list[SpeechEvent]:
    ep = Endpointer(rules, RATE)
    events: list[SpeechEvent] = []
    if chunks is None:
        events += ep.feed(pcm)
    else:
        pos = 0
        for size in chunks:
            events += ep.feed(pcm[pos : pos + size])
            pos += size
        events += ep.feed(pcm[pos:])
    return events + ep.flush()


def random_chunks(total: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(rng.choice([0, 1, 3, 17, 320, 959, 960, 961, 4001, 16000]))
    return sizes


def test_one_segment_around_speech(espeak_clip: Path) -> None:
    speech = read_pcm(espeak_clip)
    pcm = noise(1.0) + speech + noise(2.0, seed=2)
    events = run(pcm)
    assert len(events) == 2
    start, end = events
    assert isinstance(start, SpeechStart) and isinstance(end, SpeechEnd)
    speech_start = RATE * 1.0
    speech_end = speech_start + len(speech) / 2
    # Pre-roll reaches back before the onset, but not much.
    assert speech_start - 0.5 * RATE <= start.sample <= speech_start + 0.1 * RATE
    # Ends after trailing silence (rule 3), within the recording.
    assert end.reason == "rule3"
    assert speech_end <= end.sample <= speech_end + 1.5 * RATE


def test_silence_and_noise_give_no_segment() -> None:
    assert run(bytes(2 * RATE * 3)) == []
    assert run(noise(6.0)) == []


def test_chunking_does_not_change_events(espeak_clip: Path) -> None:
    speech = read_pcm(espeak_clip)
    pcm = noise(0.7) + speech + noise(1.3) + speech + noise(0.4)
    whole = run(pcm)
    assert len(whole) >= 4
    for seed in range(3):
        assert run(pcm, chunks=random_chunks(len(pcm), seed)) == whole


def test_rule5_cuts_long_speech_contiguously(espeak_clip: Path) -> None:
    speech = read_pcm(espeak_clip)
    pcm = speech * 4
    rules = EndpointRules(rule5_max_utterance_length=2.0)
    events = run(pcm, rules)
    ends = [e for e in events if isinstance(e, SpeechEnd)]
    assert any(e.reason == "rule5" for e in ends)
    for a, b in itertools.pairwise(events):
        if isinstance(a, SpeechEnd) and a.reason == "rule5" and isinstance(b, SpeechStart):
            assert b.sample == a.sample
    starts = [e.sample for e in events if isinstance(e, SpeechStart)]
    for s, e in zip(starts, ends, strict=True):
        assert 0 < (e.sample - s) / RATE <= 2.0 + 0.03


def test_end_of_stream_closes_open_segment(espeak_clip: Path) -> None:
    speech = read_pcm(espeak_clip)
    events = run(noise(0.5) + speech)
    assert isinstance(events[-1], SpeechEnd)
    assert events[-1].reason == "eos"
    assert events[-1].sample == RATE // 2 + len(speech) // 2


def test_offset_makes_positions_absolute(espeak_clip: Path) -> None:
    pcm = noise(0.5) + read_pcm(espeak_clip) + noise(1.5)
    plain = run(pcm)
    ep = Endpointer(RULES, RATE, offset_samples=48000)
    shifted = ep.feed(pcm) + ep.flush()
    assert [type(e) for e in shifted] == [type(e) for e in plain]
    assert [e.sample - 48000 for e in shifted] == [e.sample for e in plain]


def test_real_clips_segment_without_losing_speech() -> None:
    clips = sorted((TESTDATA / "clips").glob("*.wav"))[:4]
    if not clips:
        pytest.skip(f"no test clips under {TESTDATA}")
    for clip in clips:
        pcm = read_pcm(clip)
        events = run(pcm)
        assert events, clip
        assert isinstance(events[0], SpeechStart)
        assert events[0].sample < RATE  # the readings start within a second
        assert run(pcm, chunks=random_chunks(len(pcm), 7)) == events
