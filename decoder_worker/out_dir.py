"""kaldi-gstreamer-server's ``out-dir``: keep a copy of each session's received audio.

The original saved the raw bytes each client sent as ``<id>.raw``. Our worker sees the
audio after the gateway normalised it (s16le mono at the model's rate), so it saves
that, as ``<session id>.wav``. A session resumed after its worker died continues in
``<session id>.from-<seconds>s.wav`` on the new owner (the first file ends where the
old owner stopped reading). Audio the worker replays to a restarted decoder process
is written once.
"""

from __future__ import annotations

import logging
import wave
from pathlib import Path

log = logging.getLogger(__name__)


class SessionAudio:
    """A WAV file that receives a session's audio at absolute sample positions."""

    def __init__(self, folder: str, sid: str, sample_rate: int, first_sample: int) -> None:
        name = sid if first_sample == 0 else f"{sid}.from-{first_sample / sample_rate:.2f}s"
        self.path = Path(folder) / f"{name}.wav"
        self._upto = first_sample  # absolute sample up to which the file holds audio
        self._wav: wave.Wave_write | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            wav = wave.open(str(self.path), "wb")
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            self._wav = wav
        except OSError as exc:
            log.warning("[%s] cannot save audio to %s: %s", sid, self.path, exc)

    def write(self, position: int, pcm: bytes) -> None:
        """Audio starting at absolute sample ``position``; what the file has is skipped."""
        if self._wav is None:
            return
        end = position + len(pcm) // 2
        if end <= self._upto:
            return
        if position < self._upto:
            pcm = pcm[(self._upto - position) * 2 :]
        try:
            self._wav.writeframesraw(pcm)
        except OSError as exc:
            log.warning("saving audio to %s failed: %s", self.path, exc)
            self.close()
            return
        self._upto = end

    def close(self) -> None:
        wav, self._wav = self._wav, None
        if wav is not None:
            try:
                wav.close()
            except OSError as exc:
                log.warning("closing %s failed: %s", self.path, exc)
