"""Word times: agreement with the ``vosk`` package, their CPU, and their memory.

    python -m benchmarks.word_times [--out benchmarks/results/word-times.json]
                                    [--sets ko,ko-more] [--sessions 4] [--skip-cluster]

Three measurements, each in processes of its own (kaldi-active-grammar carries state
from one decode to the next, and each way of loading a lexicon has its own memory):

* **Agreement and CPU, per set of recordings** (``ko``: 22 clips; ``ko-more``: 70). A
  spawned interpreter loads the engine as a worker does (per-utterance lexicon) and
  decodes every clip with the worker's recogniser, in forks of the engine as a worker
  does (one per decoder epoch). In the decoding process, the CPU spent on an utterance
  before alignment (feature extraction, decoding, finalising: the utterance's decode
  CPU) and the CPU of the alignment itself are read with ``time.process_time`` (a
  fork starts at zero; each utterance counts from the end of the one before). The
  words are compared with those of the ``vosk`` package (``KaldiRecognizer``,
  ``SetWords(True)``, same model): of the words both produced (matched by sequence
  alignment, :mod:`harness.word_times`), the share whose start and end are both within
  0.1 s of vosk's.
* **The whole lexicon instead**: the same on the ``ko`` set with the lexicon loaded by
  the decoder's constructor (``KagEngine.load(whole_lexicon=True)``): its load time,
  the loaded template's PSS, and the alignment CPU then. Compared with the engine
  without word times and with the per-utterance way.
* **PSS per stream** through the real cluster: a worker with ``--sessions`` slots
  (``--word-times true``, then ``false``), that many clips streamed at once in real
  time, PSS of the worker and all its descendants sampled from ``/proc`` as
  ``benchmarks.cluster`` does: peak minus idle, per session; and the whole tree's peak
  per session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.cluster import sampled_sessions
from benchmarks.common import load_average, machine
from harness.cluster import KSC, LocalRedis, free_port, stop, wait_ready
from harness.env import CACHE, TESTDATA, TESTDATA_MORE
from harness.measure import memory, percentile, tree_memory
from harness.scoring import read_manifest
from harness.word_times import Agreement, Word, agreement, vosk_words

SETS = {"ko": TESTDATA, "ko-more": TESTDATA_MORE}
DEFAULT_OUT = Path(__file__).parent / "results" / "word-times.json"


# --- in a spawned interpreter: one engine, every clip, each utterance timed ----------


class _Timed:
    """The loaded engine, with its finish in two timed steps (``decoder_worker``'s
    ``Aligning`` protocol): the decoding process appends one JSON line per utterance to
    ``log``."""

    def __init__(self, engine: Any, log: int) -> None:
        self.engine = engine
        self.sample_rate = engine.sample_rate
        self._log = log
        self._mark = 0.0  # the process's CPU when its last utterance was done (a fork: 0)

    def accept(self, pcm: bytes) -> None:
        self.engine.accept(pcm)

    def partial(self) -> str:
        return str(self.engine.partial())

    def finalize(self) -> Any:
        return self.engine.finalize()

    def align(self, decoded: Any) -> Any:
        before = time.process_time()
        decode_cpu = before - self._mark
        out = self.engine.align(decoded)
        self._mark = time.process_time()
        align_cpu = self._mark - before
        line = {"decode_cpu": decode_cpu, "align_cpu": align_cpu, "words": bool(decoded.text)}
        line["failed"] = out.align_failed
        os.write(self._log, (json.dumps(line) + "\n").encode())
        return out

    def finish(self) -> Any:
        return self.align(self.finalize())


def _decode_set(paths: list[str], whole_lexicon: bool, word_times: bool) -> dict[str, Any]:
    from decoder_worker.engine import KagEngine
    from decoder_worker.forking import ForkingEngine
    from decoder_worker.model import load_prepared, prepare_model
    from decoder_worker.recognizer import decode_pcm
    from harness.media import read_wav

    model = load_prepared(prepare_model(cache_dir=CACHE))
    started = time.monotonic()
    engine = KagEngine.load(model, word_times=word_times, whole_lexicon=whole_lexicon)
    load_s = time.monotonic() - started
    template_memory = memory(os.getpid())
    log_path = Path(f"/tmp/ksc-word-times-{os.getpid()}.jsonl")
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    timed = _Timed(engine, log)
    words: dict[str, list[Word]] = {}
    finals = failed = 0
    audio = 0.0
    try:
        for path in paths:
            pcm = read_wav(Path(path))
            audio += len(pcm) / 2 / model.sample_rate
            found = decode_pcm(ForkingEngine(timed), model.endpoint, pcm)
            finals += len(found)
            failed += sum(final.align_failed for final in found)
            words[path] = [(w.word, w.start, w.end) for f in found for w in f.words or ()]
    finally:
        os.close(log)
    utterances = [json.loads(line) for line in log_path.read_text().splitlines()]
    log_path.unlink()
    return {
        "load_s": round(load_s, 2),
        "template_pss_mb": round(template_memory["pss"], 1),
        "template_rss_mb": round(template_memory["rss"], 1),
        "audio_s": round(audio, 1),
        "finals": finals,
        "finals_alignment_failed": failed,
        "utterances": utterances,
        "words": words,
    }


def decode_set(
    paths: list[Path], *, whole_lexicon: bool, word_times: bool = True
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return dict(pool.apply(_decode_set, ([str(p) for p in paths], whole_lexicon, word_times)))


def cpu_summary(utterances: list[dict[str, Any]]) -> dict[str, Any]:
    """Alignment CPU against decode CPU, over the utterances that had words."""
    timed = [u for u in utterances if u["words"]]
    decode = sum(u["decode_cpu"] for u in timed)
    align = sum(u["align_cpu"] for u in timed)
    per = [1000 * u["align_cpu"] for u in timed]
    return {
        "utterances": len(timed),
        "decode_cpu_s": round(decode, 2),
        "align_cpu_s": round(align, 3),
        "align_share_of_decode_cpu": round(align / decode, 4) if decode else None,
        "align_ms_per_utterance": {
            "mean": round(sum(per) / len(per), 2) if per else None,
            "p50": round(percentile(per, 50), 2),
            "p95": round(percentile(per, 95), 2),
            "max": round(max(per, default=0.0), 2),
        },
    }


def agreement_report(ours: dict[str, list[Word]], theirs: dict[Path, list[Word]]) -> dict[str, Any]:
    total = Agreement(0, 0)
    worst: list[tuple[float, str]] = []
    for path, words in ours.items():
        one = agreement(words, theirs[Path(path)])
        total += one
        worst.append((one.ratio if one.matched else 1.0, Path(path).name))
    return {
        "matched_words": total.matched,
        "agreeing_words": total.agreeing,
        "agreement": round(total.ratio, 4),
        "tolerance_s": 0.1,
        "lowest_clips": [{"clip": n, "agreement": round(r, 3)} for r, n in sorted(worst)[:3]],
    }


# --- the cluster: PSS per stream with and without word times --------------------------


async def _sessions(ws: str, clips: list[Path], worker: int) -> dict[str, Any]:
    peak, results = await sampled_sessions(ws, clips, worker)
    timed = sum("word-alignment" in f["result"]["hypotheses"][0] for r in results for f in r.finals)
    return {"peak": peak, "finals": sum(len(r.finals) for r in results), "timed_finals": timed}


def cluster_pss(clips: list[Path], word_times: bool) -> dict[str, Any]:
    work = Path(f"/tmp/ksc-bench-wt-{os.getpid()}")
    redis = LocalRedis(work / "redis")
    redis.start()
    port, prefix = free_port(), "bench"
    common = ["--redis-url", redis.url, "--prefix", prefix, "--log-level", "warning"]
    gateway = subprocess.Popen([*KSC, "gateway", *common, "--port", str(port)])
    worker = subprocess.Popen(
        [
            *KSC,
            "worker",
            *common,
            "--slots",
            str(len(clips)),
            "--cache",
            str(CACHE),
            "--metrics-port",
            "0",
            "--word-times",
            "true" if word_times else "false",
        ]
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", len(clips), limit=300)
        time.sleep(1.0)
        idle = tree_memory(worker.pid)
        live = asyncio.run(_sessions(f"ws://127.0.0.1:{port}", clips, worker.pid))
    finally:
        stop(gateway, worker)
        redis.stop()
    n = len(clips)
    return {
        "word_times": word_times,
        "idle_worker_pss_mb": round(idle["total_pss_mb"], 1),
        "peak_total_pss_mb": round(live["peak"]["total_pss_mb"], 1),
        "pss_per_session_mb": round((live["peak"]["total_pss_mb"] - idle["total_pss_mb"]) / n, 1),
        "total_pss_per_session_mb": round(live["peak"]["total_pss_mb"] / n, 1),
        "finals": live["finals"],
        "finals_with_word_times": live["timed_finals"],
    }


# --- the run ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="ko,ko-more", help="recording sets, comma-separated")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent streams (PSS)")
    parser.add_argument("--skip-cluster", action="store_true", help="no PSS-per-stream runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": load_average(),
        "sets": {},
    }
    decoded: dict[str, dict[str, Any]] = {}
    for name in args.sets.split(","):
        paths = [path for path, _ in read_manifest(SETS[name])]
        print(f"{name}: {len(paths)} clips, decoding ...", file=sys.stderr)
        ours = decoded[name] = decode_set(paths, whole_lexicon=False)
        print(f"{name}: vosk ...", file=sys.stderr)
        theirs = vosk_words(paths)
        report["sets"][name] = {
            "clips": len(paths),
            "audio_s": ours["audio_s"],
            "finals": ours["finals"],
            "finals_alignment_failed": ours["finals_alignment_failed"],
            **agreement_report(ours["words"], theirs),
            "cpu": cpu_summary(ours["utterances"]),
        }
    paths = [path for path, _ in read_manifest(TESTDATA)]
    print("ko: the whole lexicon, and no word times ...", file=sys.stderr)
    utterance = decoded.get("ko") or decode_set(paths, whole_lexicon=False)
    whole = decode_set(paths, whole_lexicon=True)
    none = decode_set(paths, whole_lexicon=False, word_times=False)
    report["lexicon_choice"] = {
        mode: {
            "load_s": run["load_s"],
            "template_pss_mb": run["template_pss_mb"],
            "template_rss_mb": run["template_rss_mb"],
            "cpu": cpu_summary(run["utterances"]),
        }
        for mode, run in (("per_utterance", utterance), ("whole", whole), ("none", none))
    }
    if not args.skip_cluster:
        clips = sorted(paths, key=lambda p: -p.stat().st_size)[: args.sessions]
        report["pss_per_stream"] = {
            "sessions": args.sessions,
            "with": cluster_pss(clips, word_times=True),
            "without": cluster_pss(clips, word_times=False),
        }
    report["load_average_after"] = load_average()
    text = json.dumps(report, ensure_ascii=False, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
