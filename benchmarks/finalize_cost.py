"""Where a final's time goes once the decoder has caught up with the audio.

    python -m benchmarks.finalize_cost [--clips N] [--out FILE]

Each clip (ko, the N longest) is decoded in a fresh fork of the worker's template
engine, as a session's decoding process would, all but the end; then the three steps
of :meth:`~decoder_worker.engine.KagEngine.finish` are timed apart: the last ``decode``
call with ``finalize`` (the network's last chunk and the search's final step),
``get_output`` (the lattice determinised and its best path read) and the word
alignment. Wall milliseconds of an otherwise idle process; prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from harness.media import read_wav
from harness.scoring import DEFAULT_CLIPS, read_manifest

CACHE = os.environ.get("KSC_CACHE") or str(Path.home() / ".cache" / "kaldi-stream-cluster")
STEPS = ("finalize_decode_ms", "get_output_ms", "align_ms")


def _steps(engine: Any, pcm: bytes) -> list[float]:
    """In the calling process: decode ``pcm``, then time the three steps of a final."""
    from decoder_worker.engine import Decoded, clean_text

    engine.accept(pcm)
    t0 = time.perf_counter()
    engine._decode(bytes(engine._pending), finalize=True)
    t1 = time.perf_counter()
    raw, info = engine._decoder.get_output()
    t2 = time.perf_counter()
    engine._raw = raw
    engine.align(Decoded(clean_text(raw), float(info["likelihood"])))
    t3 = time.perf_counter()
    return [(t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000]


def measure(n_clips: int) -> dict[str, Any]:
    from decoder_worker.engine import KagEngine
    from decoder_worker.model import load_prepared, prepare_model

    model = load_prepared(prepare_model(cache_dir=Path(CACHE)))
    engine = KagEngine.load(model)
    items = read_manifest(DEFAULT_CLIPS)
    pcms = sorted((read_wav(path) for path, _ in items), key=len, reverse=True)[:n_clips]
    rows = []
    for pcm in pcms:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # a fresh fork per clip, as a session's decoding process
            os.close(read)
            os.write(write, json.dumps(_steps(engine, pcm)).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            rows.append(json.loads(f.read()))
        os.waitpid(pid, 0)
    return {
        "clips": len(rows),
        "audio_s": [round(len(p) / 32000, 2) for p in pcms],
        "median": {
            step: round(statistics.median(r[i] for r in rows), 1) for i, step in enumerate(STEPS)
        },
        "per_clip": [dict(zip(STEPS, (round(x, 1) for x in r), strict=True)) for r in rows],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=12, help="the N longest ko clips")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    report = measure(args.clips)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps(report["median"]))


if __name__ == "__main__":
    main()
