"""What a typed pipe message costs against the bare tuple it replaced.

    python -m benchmarks.pipe_cost [--frames 200000] [--out FILE.json]

Encodes (with the pipes' own framing) and unpickles a quarter second of 16 kHz audio
(8000 bytes) as :class:`decoder_worker.pipes.Audio`, and the ``("audio", pcm)`` tuple
it replaced the same way; prints microseconds per message.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

from decoder_worker import pipes

PCM = bytes(8000)


def _per_message(frames: int, once: object) -> float:
    started = time.perf_counter()
    for _ in range(frames):
        once()  # type: ignore[operator]
    return (time.perf_counter() - started) / frames * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    message = pipes.Audio(PCM)
    header = pipes.HEADER.size
    typed = _per_message(args.frames, lambda: pickle.loads(pipes.encode(message)[header:]))
    bare = ("audio", PCM)
    tuple_ = _per_message(
        args.frames, lambda: pickle.loads(pickle.dumps(bare, protocol=pickle.HIGHEST_PROTOCOL))
    )
    report = {
        "frames": args.frames,
        "audio_bytes": len(PCM),
        "typed_us": round(typed, 2),
        "tuple_us": round(tuple_, 2),
        "typed_bytes": len(pipes.encode(message)),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
