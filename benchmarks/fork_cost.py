"""What decoding an utterance in a fresh fork costs (CPU), next to a warm decoder.

    python -m benchmarks.fork_cost [--clip WAV] [--out benchmarks/results/fork_cost.json]

The worker decodes in fresh forks of a loaded, never-used engine, so that results
depend on the audio alone (docs/engine.md); it used to fork once per utterance, and
now once per decoder epoch. This measures what a fresh fork costs:

- ``fork_ms``: the ``fork()`` call of a process holding the model (page tables);
- ``cold_utterance_cpu_ms``: CPU of decoding the clip in a fresh fork (what the first
  utterance of an epoch pays);
- ``warm_utterance_cpu_ms``: CPU of decoding it again in that same process, whose
  lazily expanded decoding graph is now warm (what a long-lived decoder would pay);
- ``warmed_on_one_other_cpu_ms``: in a fresh fork of a template that decoded one other
  utterance first (a deterministic warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from decoder_worker.engine import KagEngine
from decoder_worker.model import load_prepared, prepare_model
from harness.media import pcm_of

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = REPO.parent / "shared" / "testdata" / "ko" / "clips" / "emotts_nea00002.wav"
WARM_CLIP = REPO / "shared" / "samples" / "ko-sample.wav"
TRIALS = 3


def child_cpu(engine: KagEngine, pcm: bytes, times: int) -> float:
    """Mean CPU seconds of a fresh fork decoding ``pcm`` ``times`` times in a row."""
    total = 0.0
    for _ in range(TRIALS):
        pid = os.fork()
        if pid == 0:
            for _ in range(times):
                engine.accept(pcm)
                engine.finish()
            os._exit(0)
        _, _, usage = os.wait4(pid, 0)
        total += usage.ru_utime + usage.ru_stime
    return total / TRIALS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--clip", type=Path, default=DEFAULT_CLIP if DEFAULT_CLIP.exists() else WARM_CLIP
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "kaldi-stream-cluster"))
    args = parser.parse_args()
    engine = KagEngine.load(load_prepared(prepare_model(cache_dir=Path(args.cache))))
    pcm = pcm_of(args.clip)
    forks = []
    for _ in range(TRIALS):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forks.append(time.perf_counter() - t0)
        os.waitpid(pid, 0)
    once = child_cpu(engine, pcm, 1)
    twice = child_cpu(engine, pcm, 2)
    engine.accept(pcm_of(WARM_CLIP))  # the template decodes one other utterance
    engine.finish()
    warmed = child_cpu(engine, pcm, 1)
    audio = len(pcm) / 2 / engine.sample_rate
    report = {
        "clip": args.clip.name,
        "audio_s": round(audio, 2),
        "fork_ms": round(sum(forks) / TRIALS * 1000, 1),
        "cold_utterance_cpu_ms": round(once * 1000),
        "warm_utterance_cpu_ms": round((twice - once) * 1000),
        "warmed_on_one_other_cpu_ms": round(warmed * 1000),
        "rtf_cold": round(once / audio, 3),
        "rtf_warm": round((twice - once) / audio, 3),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
