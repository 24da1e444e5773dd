"""The benchmark suite's harness, end to end with tiny parameters (``make bench-smoke``).

Runs ``python -m benchmarks.run --smoke`` as ``make bench`` runs it: real Redis, a real
gateway and worker, the real vosk server, real clients. It checks that every stage ran
and produced what the figures are computed from, not what the figures are.
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
    # One live stream against each server, ended normally with a final.
    for kind in ("ours", "vosk"):
        (level,) = details["levels"][kind]
        assert level["errors"] == [], level
        assert len(level["final_latency_s"]) == 1
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


@pytest.mark.parametrize("module", ["benchmarks.vosk_server", "benchmarks.gateway_load"])
def test_entry_points_have_help(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "usage" in proc.stdout
