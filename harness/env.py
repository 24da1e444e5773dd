"""Where things are, and how slow this machine may be."""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout.
REPO = Path(__file__).resolve().parents[1]
#: Real Korean recordings (``manifest.tsv`` + clips), beside the checkout.
TESTDATA = REPO.parent / "shared" / "testdata" / "ko"
#: The second, larger set of recordings (14 other speakers).
TESTDATA_MORE = REPO.parent / "shared" / "testdata" / "ko-more"
#: Prepared models, as ``ksc`` keeps them (``KSC_CACHE``).
CACHE = Path(os.environ.get("KSC_CACHE") or Path.home() / ".cache" / "kaldi-stream-cluster")
#: Timeouts in tests are multiples of this many seconds (``KSC_TEST_TIMEOUT_SCALE``);
#: nothing asserts wall-clock times.
UNIT = float(os.environ.get("KSC_TEST_TIMEOUT_SCALE", "1")) * 1.0
