"""Would a longer warm-up of the template engine pay? Decoder CPU and CER, before and after.

    python -m benchmarks.warmup [--sets ko,ko-more] [--limit N] [--out FILE]

Every decoder epoch decodes in a fresh fork of the worker's template engine
(docs/engine.md), and each fork starts with kaldi-active-grammar's lazily expanded
lookahead graph as the template left it. :meth:`~decoder_worker.engine.KagEngine.load`
warms the template with the bundled sample (9 s of espeak-ng speech). This measures
what more synthetic speech would add: the clips of the sets are decoded as the
cluster decodes them (endpointer, epochs, a partial every 0.25 s of audio), each clip
in a fresh fork, first from the template as ``load`` leaves it, then again after the
template also decoded espeak-ng's reading of ``benchmarks/warmup-ko.txt`` (our own
sentences, nothing from the test sets), one utterance per line. Each fork still starts
from one fixed state, so results stay reproducible; they are not the same results,
which is why the CER is measured next to the CPU. Needs ``espeak-ng`` and ``sox``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.env import TESTDATA, TESTDATA_MORE
from harness.media import espeak, read_wav
from harness.scoring import cer, read_manifest

TEXT = Path(__file__).with_name("warmup-ko.txt")
SETS = {"ko": TESTDATA, "ko-more": TESTDATA_MORE}
CACHE = os.environ.get("KSC_CACHE") or str(Path.home() / ".cache" / "kaldi-stream-cluster")
#: Audio per ``feed`` and between partials, as a live session sends and gets them.
FRAME_BYTES = 8000
PARTIAL_S = 0.25


def _children_cpu() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_minflt


def decode_sets(engine: Any, rules: Any, sets: list[str], limit: int) -> dict[str, Any]:
    """Every clip in a fresh fork of ``engine``: CPU per audio second and CER, per set."""
    from decoder_worker.forking import ForkingEngine
    from decoder_worker.recognizer import Final, Recognizer

    out: dict[str, Any] = {}
    for name in sets:
        items = read_manifest(SETS[name])[: limit or None]
        cpu0, faults0 = _children_cpu()
        edits = chars = 0
        audio = 0.0
        for path, ref in items:
            pcm = read_wav(path)
            audio += len(pcm) / 32000
            fork = ForkingEngine(engine)
            recognizer = Recognizer(fork, rules, partial_interval=PARTIAL_S)
            finals = []
            for i in range(0, len(pcm), FRAME_BYTES):
                finals += [
                    e for e in recognizer.feed(pcm[i : i + FRAME_BYTES]) if isinstance(e, Final)
                ]
            finals += [e for e in recognizer.end() if isinstance(e, Final)]
            fork.close()
            e, c = cer(ref, " ".join(f.text for f in finals))
            edits, chars = edits + e, chars + c
        cpu1, faults1 = _children_cpu()
        out[name] = {
            "clips": len(items),
            "audio_s": round(audio, 1),
            "cpu_per_audio_s": round((cpu1 - cpu0) / audio, 4),
            "minor_faults_per_audio_s": round((faults1 - faults0) / audio),
            "cer": round(edits / chars, 4),
            "edits": edits,
            "ref_chars": chars,
        }
    return out


def measure(sets: list[str], limit: int) -> dict[str, Any]:
    from decoder_worker.engine import KagEngine
    from decoder_worker.model import load_prepared, prepare_model

    model = load_prepared(prepare_model(cache_dir=Path(CACHE)))
    engine = KagEngine.load(model, word_times=False)
    report: dict[str, Any] = {"as_loaded": decode_sets(engine, model.endpoint, sets, limit)}
    lines = [line for line in TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="ksc-warmup-") as folder:
        speech = [read_wav(espeak(line, Path(folder) / f"{i}.wav")) for i, line in enumerate(lines)]
    t0 = time.process_time()
    for pcm in speech:
        engine.accept(pcm)
        engine.finish()
    report["extra_warmup"] = {
        "utterances": len(speech),
        "audio_s": round(sum(len(p) for p in speech) / 32000, 1),
        "cpu_s": round(time.process_time() - t0, 2),
    }
    report["warmed_more"] = decode_sets(engine, model.endpoint, sets, limit)
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="ko,ko-more", help="comma-separated test sets")
    parser.add_argument("--limit", type=int, default=0, help="at most N clips per set")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    report = measure(args.sets.split(","), args.limit)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
