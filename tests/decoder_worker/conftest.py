"""Fixtures of the decoder tests; the model and engine come from ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.env import TESTDATA

__all__ = ["TESTDATA"]


@pytest.fixture(scope="session")
def espeak_clip(espeak_wav: Callable[..., Path]) -> Path:
    """One Korean sentence from espeak-ng, 16 kHz mono s16 (deterministic)."""
    return espeak_wav("안녕하세요 오늘 날씨가 좋습니다", speed=175, pad=False)
