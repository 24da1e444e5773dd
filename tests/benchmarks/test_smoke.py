"""The benchmark suite's harness, end to end with tiny parameters (``make bench-smoke``).

Runs ``python -m benchmarks.run --smoke`` as ``make bench`` runs it: real Redis, a real
gateway and worker, the real vosk server, real clients. It checks that every stage ran
and produced what the figures are computed from, not what the figures are. The soak
(``python -m benchmarks.soak``) runs bounded to two minutes the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.env import CACHE, REPO, UNIT

KEYS = (
    "overhead_ratio",
    "rtf_ratio_vs_vosk",
    "streams_ratio_vs_vosk_server",
    "live_cpu_ratio_vs_vosk_server",
    "p95_latency_le_vosk_every_level",
    "cpu_busy_before_p95_1s",
    "cer_cluster_minus_direct",
    "p95_final_latency_ms",
    "partial_interval_p95_ms",
    "pss_per_stream_mb",
    "gateway_streams",
    "gateway_p99_forward_ms",
)


def test_bench_smoke_writes_every_figure(tmp_path: Path, prepared_model: object) -> None:
    env = {**os.environ, "KSC_CACHE": str(CACHE)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280 * UNIT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    for key in KEYS:
        assert key in report, key
    assert report["smoke"] is True
    machine = report["machine"]
    assert machine["cores"] and machine["cpu_model"] and machine["python"]
    assert machine["packages"]["vosk"] and machine["packages"]["kaldi-active-grammar"]
    assert len(report["load_average"]["before"]) == 3

    details = report["details"]
    # Both decoders decoded; the cluster's text equals the direct decode of the same clip.
    assert details["cost"]["ours"]["rtf_cpu"] > 0 and details["cost"]["vosk"]["rtf_cpu"] > 0
    for round_ in details["overhead"]["rounds"]:
        assert round_["texts_equal"], round_
        assert round_["direct"]["throughput"] > 0 and round_["cluster"]["throughput"] > 0
    # One live stream against each server, ended normally with a final; the server's
    # CPU and the machine's were measured, and the client kept its pace.
    for kind in ("ours", "vosk"):
        (level,) = details["levels"][kind]
        assert level["errors"] == [], level
        assert len(level["final_latency_s"]) == 1
        assert level["server_cpu_per_audio_s"] > 0 and 0 < level["cpu_busy"] <= 1
        # ... split by process: the parts add up to the whole.
        parts = level["server_cpu_per_audio_s_by_process"]
        assert abs(sum(parts.values()) - level["server_cpu_per_audio_s"]) < 0.01, parts
        assert level["wall_ratio_max"] >= 0.99
    # Accuracy: two clips of each set through the cluster, directly and with vosk.
    accuracy = report["accuracy"]
    assert accuracy["clips"] == 4 and accuracy["ref_chars"] > 0
    for way in ("cluster", "direct_whole", "vosk"):
        assert 0 <= accuracy[way]["cer"] < 1, accuracy
    assert details["levels"]["ours"][0]["peak_pss_mb"] > details["levels"]["idle_pss_mb"] > 0
    assert all(ms > 0 for ms in details["finalize_ms"])
    # Every frame of every gateway stream reached Redis and was matched to its send time.
    gateway = details["gateway"]
    assert gateway["n_client_errors"] == 0, gateway["client_errors"]
    assert gateway["frames_missing"] == 0
    assert gateway["delays_ms_count"] == gateway["frames_sent"] > 0
    assert report["gateway_streams"] == gateway["streams"]
    for name in report["plots"]:
        assert (tmp_path / name).stat().st_size > 1000


SOAK_CHECKS = {
    "finals_not_lost_or_duplicated",
    "good_sessions_completed",
    "restart_cut_sessions_ended",
    "no_refusal_with_free_slot",
    "rss_flat_after_warmup",
    "redis_back_to_baseline",
    "ended_session_keys_have_ttl",
    "hostile_bounded",
    "faults_recovered",
}


@pytest.mark.slow
@pytest.mark.timeout(900 * UNIT)
def test_soak_smoke_writes_every_check(tmp_path: Path, prepared_model: object) -> None:
    """``python -m benchmarks.soak`` bounded to two minutes (two streams, faults and
    hostile clients compressed into them, no TTL wait): it runs to its end and writes
    every check with a verdict. A check may fail on the service (exit 1); the script
    itself must not break (exit 2, a traceback, an interrupted run)."""
    out = tmp_path / "soak.json"
    argv = ["--minutes", "2", "--ttl-wait", "0", "--streams", "2", "--clips", "8"]
    argv += ["--hostile-every", "8-12", "--key-check-every", "20", "--sample-every", "10"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", *argv, "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "KSC_CACHE": str(CACHE)},
        capture_output=True,
        text=True,
        timeout=720 * UNIT,
    )
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "interrupted" not in report, report.get("traceback")
    assert set(report["checks"]) == SOAK_CHECKS
    assert all(isinstance(c["pass"], bool) for c in report["checks"].values())
    assert report["passed"] == (proc.returncode == 0)
    assert "soak summary" in proc.stdout
    # Every part of the run produced what its checks are computed from.
    assert report["sessions"] and report["hostile"] and report["ttl_checks"]
    assert {s["name"] for s in report["rss_samples"]} >= {"gateway", "redis"}
    assert any("at_s" in f for f in report["faults"]), report["faults"]


@pytest.mark.parametrize(
    "module",
    [
        "benchmarks.vosk_server",
        "benchmarks.gateway_load",
        "benchmarks.soak",
        "benchmarks.warmup",
        "benchmarks.finalize_cost",
    ],
)
def test_entry_points_have_help(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "usage" in proc.stdout


def test_finalize_cost_times_each_step(tmp_path: Path, prepared_model: object) -> None:
    out = tmp_path / "finalize.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.finalize_cost", "--clips", "1", "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "KSC_CACHE": str(CACHE)},
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (clip,) = json.loads(out.read_text())["per_clip"]
    assert all(clip[step] > 0 for step in ("finalize_decode_ms", "get_output_ms", "align_ms"))
