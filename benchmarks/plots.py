"""PNG plots of a benchmark report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_plots(report: dict[str, Any], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    levels = {kind: report["details"]["levels"][kind] for kind in ("ours", "vosk")}

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, marker in (("ours", "o"), ("vosk", "s")):
        rows = levels[kind]
        xs = [r["concurrency"] for r in rows]
        ax1.plot(xs, [r["throughput_audio_s_per_s"] for r in rows], marker=marker, label=kind)
        ax2.plot(xs, [r["final_latency_p95_s"] * 1000 for r in rows], marker=marker, label=kind)
    top = max((r["concurrency"] for rows in levels.values() for r in rows), default=1)
    ax1.plot([0, top], [0, top], ":", color="grey", label="real time")
    ax1.set(
        xlabel="concurrent live streams",
        ylabel="audio seconds decoded per second",
        title="Throughput against concurrency",
    )
    ax2.axhline(
        1000 * report["details"]["sustain_limit_s"], ls=":", color="grey", label="sustain limit"
    )
    ax2.set(
        xlabel="concurrent live streams",
        ylabel="p95 final latency (ms)",
        title="Final latency after end of audio",
        yscale="log",
    )
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = folder / "throughput.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path.name)

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    lat = report["details"]["latency_samples_ms"]
    bins = 30
    ax1.hist([lat["ours"], lat["vosk"]], bins=bins, label=["ours", "vosk"])
    ax1.set(
        xlabel="final latency after end of audio (ms)",
        ylabel="streams",
        title="Final latency (levels within real time)",
    )
    ax1.legend()
    ax2.hist(report["details"]["partial_intervals_ms"], bins=bins)
    ax2.set(xlabel="interval between partials (ms)", ylabel="partials", title="Partial intervals")
    gw = report["details"]["gateway"]["delays_ms"]
    ax3.hist(gw, bins=60, log=True)
    ax3.set(
        xlabel="client send -> Redis stream entry (ms)",
        ylabel="frames",
        title=f"Gateway forwarding delay, {report['gateway_streams']} streams",
    )
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = folder / "latency.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path.name)
    return written
