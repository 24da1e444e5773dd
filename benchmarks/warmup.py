"""Would a warm-up of the template engine pay? CPU and CER of the cluster's way of decoding.

    python -m benchmarks.warmup [--warmup none|sample] [--clips N] [--out FILE]

The worker decodes in fresh forks of a loaded, never-used engine, one per decoder
epoch (docs/engine.md), and each fork starts with kaldi-active-grammar's lazily
expanded lookahead graph as the template left it: the first utterance in a process
costs several times a warm one. ``--warmup sample`` lets the template decode the bundled sample
(``shared/samples/ko-sample.wav``) once before any fork, so every fork inherits the
expanded part of the graph. Each epoch still starts from one fixed state, so
results stay reproducible (a takeover's replay stays exact); they are not the same
results as without the warm-up, which is why the CER is measured next to the CPU.
Run it with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in the environment to see what
transparent huge pages do to the forks. Decoding: :func:`decoder_worker.recognizer.decode_pcm`
with a :class:`~decoder_worker.forking.ForkingEngine`, as :mod:`benchmarks.cer` does.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from harness.media import read_wav
from harness.scoring import DEFAULT_CLIPS, cer, read_manifest

SAMPLE = Path(__file__).resolve().parents[1] / "shared" / "samples" / "ko-sample.wav"
CACHE = os.environ.get("KSC_CACHE") or str(Path.home() / ".cache" / "kaldi-stream-cluster")


def measure(warmup: str, n_clips: int) -> dict[str, Any]:
    from decoder_worker.engine import KagEngine
    from decoder_worker.forking import ForkingEngine
    from decoder_worker.model import load_prepared, prepare_model
    from decoder_worker.recognizer import decode_pcm

    model = load_prepared(prepare_model(cache_dir=Path(CACHE)))
    engine = KagEngine.load(model)
    if warmup == "sample":
        engine.accept(read_wav(SAMPLE))
        engine.finish()
    items = read_manifest(DEFAULT_CLIPS)[: n_clips or None]
    edits = chars = 0
    cpu = audio = 0.0
    for path, ref in items:
        pcm = read_wav(path)
        t = os.times()
        c0 = t.children_user + t.children_system
        finals = decode_pcm(ForkingEngine(engine), model.endpoint, pcm)
        t = os.times()
        cpu += t.children_user + t.children_system - c0
        audio += len(pcm) / 32000
        e, c = cer(ref, " ".join(f.text for f in finals))
        edits += e
        chars += c
    t0 = time.perf_counter()
    for _ in range(5):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    fork_ms = (time.perf_counter() - t0) / 5 * 1000
    return {
        "warmup": warmup,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "clips": len(items),
        "audio_s": round(audio, 2),
        "decoder_cpu_s": round(cpu, 2),
        "rtf_cpu": round(cpu / audio, 3),
        "cer": round(edits / chars, 4),
        "edits": edits,
        "ref_chars": chars,
        "fork_ms": round(fork_ms, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", choices=("none", "sample"), default="none")
    parser.add_argument("--clips", type=int, default=0, help="first N clips; 0: all")
    parser.add_argument("--out", type=Path, help="append the JSON line here")
    args = parser.parse_args(argv)
    report = measure(args.warmup, args.clips)
    line = json.dumps(report)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
