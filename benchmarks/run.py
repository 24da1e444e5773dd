"""The benchmark suite: every figure of docs/performance.md, side by side in one run.

    python -m benchmarks.run [--out benchmarks/results] [--smoke]

Writes ``latest.json`` (the figures, the machine, the load average, and the details
they were computed from) and the plots ``throughput.png`` and ``latency.png`` into
``--out``. ``--smoke`` runs every stage with tiny parameters: it checks the harness,
not the numbers. Stages, in order:

1. decode cost: our recogniser (forks of the loaded engine, one per decoder epoch, as
   the cluster decodes) and the ``vosk`` package on the same clips, one after the
   other in this process (:mod:`benchmarks.cer`); CPU seconds per audio second;
2. cluster overhead: the same clips decoded by ``cores`` direct decoders and through
   gateway + Redis + one worker with ``cores`` slots, interleaved
   (:mod:`benchmarks.overhead`);
3. live streams at rising concurrency against the cluster and against vosk-server's
   ``asr_server.py`` (:mod:`benchmarks.vosk_server`), each level against both back to
   back, each client streaming ``rounds`` held-out clips (``ko-more``) in turn, vosk's
   clients waiting for each frame's reply as vosk-server's own do
   (:mod:`benchmarks.streams`): latency, wall time against real time, the CPU of every
   server process per audio second, how busy the CPUs were; the worker's PSS is
   sampled meanwhile;
4. accuracy: every clip of ``ko`` and ``ko-more`` through the cluster, as one
   whole-utterance direct decode each, and with the ``vosk`` package (CER);
5. the decoder's own finalize time, for the final latency above it;
6. one gateway with many live streams and no decoders (:mod:`benchmarks.gateway_load`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import cer, gateway_load, overhead, streams
from benchmarks.common import CUTS, clips, load_average, machine, redis_pid, steal_seconds
from benchmarks.common import cluster as run_cluster
from harness.cluster import free_port, redis_server, stop
from harness.env import TESTDATA, TESTDATA_MORE
from harness.measure import max_sustained, percentile, tree_memory
from harness.media import read_wav
from harness.scoring import cer as score_cer
from harness.scoring import read_manifest

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = os.environ.get("KSC_CACHE") or str(Path.home() / ".cache" / "kaldi-stream-cluster")


class Params:
    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        cores = os.cpu_count() or 1
        self.decoders = 1 if smoke else cores
        self.cost_clips = 1 if smoke else 8
        self.overhead_clips = 2 if smoke else 8
        self.overhead_rounds = 1 if smoke else 4
        self.levels = [1] if smoke else [*range(1, 17), 18, 20]
        self.rounds = 1 if smoke else 2  # clips each live client streams in turn
        self.clip_s = 2.0 if smoke else 0.0  # 0: whole clips
        self.accuracy_clips = 2 if smoke else 0  # per set; 0: all of ko and ko-more
        self.gateway_streams = 5 if smoke else 500
        self.gateway_seconds = 3.0 if smoke else 20.0


def stage_cost(p: Params) -> dict[str, Any]:
    items = [(path, ref) for path, ref, _ in clips(p.cost_clips, p.clip_s)]
    ours = cer.run_ours(items, Path(CACHE))
    vosk = cer.run_vosk(items)
    strip = ("clips",)
    return {
        "ours": {k: v for k, v in ours.items() if k not in strip},
        "vosk": {k: v for k, v in vosk.items() if k not in strip},
    }


def stage_overhead(p: Params, engine: Any, rules: Any, ws: str) -> dict[str, Any]:
    pcms = [pcm for _, _, pcm in clips(p.overhead_clips, p.clip_s)]
    rounds = []
    for n in range(p.overhead_rounds):
        # Alternate which goes first, so that a drift in the machine's load over the
        # stage does not favour one side.
        if n % 2:
            c = overhead.through_cluster(ws, pcms, p.decoders)
            d = overhead.direct(engine, rules, pcms, p.decoders)
        else:
            d = overhead.direct(engine, rules, pcms, p.decoders)
            c = overhead.through_cluster(ws, pcms, p.decoders)
        rounds.append(
            {
                "direct": {k: v for k, v in d.items() if k != "texts"},
                "cluster": {k: v for k, v in c.items() if k != "texts"},
                "texts_equal": d["texts"] == c["texts"],
            }
        )
    direct_tp = sum(r["direct"]["throughput"] for r in rounds)
    cluster_tp = sum(r["cluster"]["throughput"] for r in rounds)
    return {"decoders": p.decoders, "rounds": rounds, "ratio": cluster_tp / direct_tp}


async def _level_with_pss(
    ws: str, worker_pid: int, pids: dict[str, int], pcms: list[bytes], c: int, rounds: int
) -> dict[str, Any]:
    samples: list[float] = []

    async def sampler() -> None:
        while True:
            samples.append(tree_memory(worker_pid)["total_pss_mb"])
            await asyncio.sleep(0.5)

    task = asyncio.create_task(sampler())
    try:
        result = await streams.level("ours", ws, pcms, c, pids, rounds)
    finally:
        task.cancel()
    result["peak_pss_mb"] = round(max(samples, default=0.0), 1)
    return result


def stage_levels(
    p: Params, cl: dict[str, Any], redis_url: str, vosk_url: str, vosk_pid: int
) -> dict[str, Any]:
    """Each level against both servers back to back. Ours counts the CPU of every server
    process (gateway, Redis, the worker with its session and decoding processes);
    vosk's, its one process."""
    # Held-out speakers (ko-more): nothing was tuned on them.
    pcms = [pcm for _, _, pcm in clips(max(p.levels) * p.rounds, p.clip_s, TESTDATA_MORE)]
    ours_pids = {
        "gateway": cl["gateway_pid"],
        "worker": cl["worker_pid"],
        "redis": redis_pid(redis_url),
    }
    time.sleep(1.0)
    idle = tree_memory(cl["worker_pid"])["total_pss_mb"]
    ours: list[dict[str, Any]] = []
    vosk: list[dict[str, Any]] = []
    for c in p.levels:
        # A server past its limit is not run at higher levels: they only take longer.
        run_ours = not ours or ours[-1]["sustained"]
        run_vosk = not vosk or vosk[-1]["sustained"]
        if not (run_ours or run_vosk):
            break
        if run_ours:
            row = asyncio.run(
                _level_with_pss(cl["ws"], cl["worker_pid"], ours_pids, pcms, c, p.rounds)
            )
            row["pss_per_stream_mb"] = round((row["peak_pss_mb"] - idle) / c, 1)
            ours.append(row)
        if run_vosk:
            vosk.append(
                asyncio.run(streams.level("vosk", vosk_url, pcms, c, {"vosk": vosk_pid}, p.rounds))
            )
        print(
            f"level {c}: ours p95 {ours[-1]['final_latency_p95_s']} s "
            f"wall {ours[-1]['wall_ratio_max']} busy {ours[-1]['cpu_busy']}, "
            f"vosk p95 {vosk[-1]['final_latency_p95_s']} s wall {vosk[-1]['wall_ratio_max']} "
            f"busy {vosk[-1]['cpu_busy']}",
            file=sys.stderr,
        )
    return {"idle_pss_mb": round(idle, 1), "ours": ours, "vosk": vosk}


def stage_accuracy(p: Params, engine: Any, ws: str) -> dict[str, Any]:
    """CER of ko and ko-more through the cluster, as one whole-utterance direct decode
    each, and with the vosk package."""
    items: list[tuple[Path, str]] = []
    for folder in (TESTDATA, TESTDATA_MORE):
        if (folder / "manifest.tsv").exists():
            items += read_manifest(folder)[: p.accuracy_clips or None]
    pcms = [read_wav(path) for path, _ in items]
    refs = [ref for _, ref in items]
    through = overhead.through_cluster(ws, pcms, p.decoders)["texts"]
    whole = [cer.whole_utterance(engine, pcm) for pcm in pcms]
    vosk = cer.run_vosk(items)
    out: dict[str, Any] = {"clips": len(items)}
    for name, texts in (
        ("cluster", through),
        ("direct_whole", whole),
        ("vosk", [c["hyp"] for c in vosk["clips"]]),
    ):
        edits = chars = 0
        for ref, hyp in zip(refs, texts, strict=True):
            e, n = score_cer(ref, hyp)
            edits, chars = edits + e, chars + n
        out[name] = {"cer": round(edits / chars, 4) if chars else None, "edits": edits}
    out["ref_chars"] = chars
    return out


def _latency_vs_vosk(levels: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours against vosk's p95 at every level vosk sustained."""
    ours = {r["concurrency"]: r for r in levels["ours"]}
    rows = []
    for v in levels["vosk"]:
        if not v["sustained"] or v["concurrency"] not in ours:
            continue
        o = ours[v["concurrency"]]
        rows.append(
            {
                "concurrency": v["concurrency"],
                "ours_p95_s": o["final_latency_p95_s"],
                "vosk_p95_s": v["final_latency_p95_s"],
                "ours_le_vosk": o["final_latency_p95_s"] <= v["final_latency_p95_s"],
            }
        )
    return rows


def _busy_before_limit(rows: list[dict[str, Any]]) -> float | None:
    """How busy the CPUs got at the levels before ours' p95 passed the sustain limit."""
    busy = []
    for r in rows:
        if r["final_latency_p95_s"] > streams.SUSTAIN_LIMIT_S:
            break
        busy.append(r["cpu_busy"])
    return max(busy, default=None)


def _live_cpu(rows: list[dict[str, Any]]) -> float | None:
    cpus = [r["server_cpu_per_audio_s"] for r in rows if r["sustained"]]
    return round(percentile(cpus, 50), 3) if cpus else None


def run(p: Params, out: Path) -> dict[str, Any]:
    from decoder_worker.engine import KagEngine
    from decoder_worker.model import load_prepared, prepare_model

    t_start = time.monotonic()

    def stage(text: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f} s] {text}", file=sys.stderr)

    load_before, steal_before = load_average(), steal_seconds()
    stage("1: decode cost, ours and vosk")
    # In a fresh interpreter: kaldi-active-grammar's state is process-wide, and the
    # direct decoders below must start from the same state as the worker's.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        cost = pool.apply(stage_cost, (p,))
    model = load_prepared(prepare_model(cache_dir=Path(CACHE)))
    engine = KagEngine.load(model)  # a template only: never decodes in this process
    stage("cluster and vosk server starting")
    vosk_port = free_port()
    vosk_proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.vosk_server", "--port", str(vosk_port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        with redis_server() as url, run_cluster(url, max(p.levels), CACHE) as cl:
            gateway_load._wait_port(vosk_port, limit=120)
            stage("2: overhead")
            over = stage_overhead(p, engine, model.endpoint, cl["ws"])
            stage("3: live streams")
            levels = stage_levels(p, cl, url, f"ws://127.0.0.1:{vosk_port}/", vosk_proc.pid)
            stage("4: accuracy, ko and ko-more")
            accuracy = stage_accuracy(p, engine, cl["ws"])
    finally:
        stop(vosk_proc)
    stage("5: finalize time")
    fin = overhead.finalize_ms(
        engine, [pcm for _, _, pcm in clips(3 if not p.smoke else 1, p.clip_s)]
    )
    stage("6: gateway")
    gw = gateway_load.measure(p.gateway_streams, p.gateway_seconds)

    cores = os.cpu_count() or 1
    within = [r for r in levels["ours"] if r["concurrency"] <= cores]
    vosk_within = [r for r in levels["vosk"] if r["concurrency"] <= cores]
    lat_ours = [x * 1000 for r in within for x in r["final_latency_s"]]
    lat_vosk = [x * 1000 for r in vosk_within for x in r["final_latency_s"]]
    intervals = [x * 1000 for r in within for x in r["partial_intervals_s"]]
    finalize = percentile(fin, 50)
    s_ours, s_vosk = max_sustained(levels["ours"]), max_sustained(levels["vosk"])
    top = [r for r in levels["ours"] if r["concurrency"] == max(s_ours, 1)]
    live_cpu = {"ours": _live_cpu(levels["ours"]), "vosk": _live_cpu(levels["vosk"])}
    vs_vosk = _latency_vs_vosk(levels)
    report: dict[str, Any] = {
        "overhead_ratio": round(over["ratio"], 3),
        "rtf_ratio_vs_vosk": round(cost["ours"]["rtf_cpu"] / cost["vosk"]["rtf_cpu"], 3),
        "streams_ratio_vs_vosk_server": round(s_ours / s_vosk, 3) if s_vosk else None,
        "live_cpu_ratio_vs_vosk_server": (
            round(live_cpu["ours"] / live_cpu["vosk"], 3)
            if live_cpu["ours"] and live_cpu["vosk"]
            else None
        ),
        "p95_latency_le_vosk_every_level": bool(vs_vosk)
        and all(r["ours_le_vosk"] for r in vs_vosk),
        "cpu_busy_before_p95_1s": _busy_before_limit(levels["ours"]),
        "cer_cluster_minus_direct": (
            round(accuracy["cluster"]["cer"] - accuracy["direct_whole"]["cer"], 4)
            if accuracy["ref_chars"]
            else None
        ),
        # End of audio -> final at the client; it includes the decoder's own finalize
        # time, so it bounds the latency above that from above.
        "p95_final_latency_ms": round(percentile(lat_ours, 95), 1),
        "partial_interval_p95_ms": round(percentile(intervals, 95), 1),
        "pss_per_stream_mb": top[0]["pss_per_stream_mb"] if top else None,
        "gateway_streams": gw["streams"] - gw["n_client_errors"],
        "gateway_p99_forward_ms": gw["forward_ms_p99"],
        "gateway_cpu_cores": gw["gateway_cpu_cores"],
        "gateway_cores_needed": gw["gateway_cores_needed"],
        "gateway_forward_ms_p50": gw["forward_ms_p50"],
        "streams_sustained": {"ours": s_ours, "vosk": s_vosk},
        "p95_final_latency_vosk_ms": round(percentile(lat_vosk, 95), 1),
        "decoder_finalize_ms": round(finalize, 1),
        "rtf_cpu": {
            "ours": round(cost["ours"]["rtf_cpu"], 3),
            "vosk": round(cost["vosk"]["rtf_cpu"], 3),
        },
        # The same, live: the CPU of every server process (ours: gateway, Redis, worker
        # and its processes; vosk: its process) per audio second, median over the
        # sustained levels.
        "live_cpu_per_audio_s": live_cpu,
        "latency_vs_vosk": vs_vosk,
        "accuracy": accuracy,
        "smoke": p.smoke,
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_average()},
        "cpu_steal_s": round(steal_seconds() - steal_before, 1),
        "duration_s": round(time.monotonic() - t_start, 1),
        "details": {
            "cost": cost,
            "overhead": over,
            "levels": levels,
            "sustain_limit_s": streams.SUSTAIN_LIMIT_S,
            "wall_limit": streams.WALL_LIMIT,
            "finalize_ms": [round(x, 1) for x in fin],
            "latency_samples_ms": {
                "ours": [round(x, 1) for x in lat_ours],
                "vosk": [round(x, 1) for x in lat_vosk],
            },
            "partial_intervals_ms": [round(x, 1) for x in intervals],
            "gateway": gw,
        },
    }
    from benchmarks.plots import write_plots

    report["plots"] = write_plots(report, out)
    gw_delays = report["details"]["gateway"].pop("delays_ms")
    report["details"]["gateway"]["delays_ms_count"] = len(gw_delays)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="tiny parameters: harness only")
    args = parser.parse_args(argv)
    try:
        report = run(Params(args.smoke), args.out)
    finally:
        shutil.rmtree(CUTS, ignore_errors=True)
    summary = {k: v for k, v in report.items() if k not in ("details", "machine")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
