"""The sample ``ksc up`` transcribes, and what it prints about it."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from harness.env import REPO
from ksc.up import SAMPLE, SAMPLE_TEXT, sample_report

SAMPLES = REPO / "shared" / "samples"


def _envelope(path: Path, frame: int = 320) -> np.ndarray:
    """RMS of each 20 ms of a 16 kHz mono WAV, mean removed."""
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (16000, 1)
        x = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64)
    k = len(x) // frame
    env: np.ndarray = np.sqrt(np.mean(x[: k * frame].reshape(k, frame) ** 2, axis=1))
    return env - float(env.mean())


def test_the_text_beside_the_sample_is_what_it_says(tmp_path: Path) -> None:
    """The sample is espeak-ng's Korean voice reading ``ko-sample.txt`` at 140 words a
    minute: synthesised again, it has the same loudness envelope (a different text
    scores below 0.5) and length."""
    says = (SAMPLES / SAMPLE_TEXT).read_text(encoding="utf-8")
    assert says.count("\n") == 1 and says.strip()
    raw, again = tmp_path / "raw.wav", tmp_path / "again.wav"
    subprocess.run(["espeak-ng", "-v", "ko", "-s", "140", "-w", str(raw), says.strip()], check=True)
    subprocess.run(
        ["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(again), "pad", "0.3", "0.5"],
        check=True,
    )
    a, b = _envelope(SAMPLES / SAMPLE), _envelope(again)
    assert abs(len(a) - len(b)) <= 10  # 0.2 s
    n = len(a) + len(b)
    corr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    assert float(np.max(corr) / np.sqrt(np.dot(a, a) * np.dot(b, b))) > 0.98


def test_the_report_puts_what_was_heard_beside_what_was_said() -> None:
    lines = sample_report("ko-sample.wav", 2.345, "아이 염파", "안녕하세요.").splitlines()
    assert lines[0] == "sample ko-sample.wav (2.3 s): 아이 염파"
    assert lines[1] == "  it says: 안녕하세요."
    assert "espeak-ng" in lines[2]
