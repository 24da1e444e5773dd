"""What a process costs, read from ``/proc``, and the statistics the benchmarks report."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return float(ordered[rank - 1])


def max_sustained(rows: list[dict[str, Any]]) -> int:
    """The highest level (``concurrency``) reached with every level up to it sustained."""
    best = 0
    for row in rows:
        if not row["sustained"]:
            break
        best = row["concurrency"]
    return best


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of one process so far; with ``children``, plus that of the
    descendants it has waited for (a worker's ended session and decoding processes)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_mark() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot, for :func:`cpu_busy`; idle and
    iowait are not busy."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    total = sum(ticks[:8])  # guest time is already inside user and nice
    return total - ticks[3] - ticks[4], total


def cpu_busy(mark: tuple[int, int]) -> float:
    """The share of the machine's CPU time that was busy since ``mark``, 0..1."""
    busy, total = cpu_mark()
    return (busy - mark[0]) / max(1, total - mark[1])


def memory(pid: int) -> dict[str, float]:
    """PSS (shared pages split among their sharers) and RSS in MB of one process."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                fields[name.lower()] = int(rest.split()[0]) / 1024
    return fields


def children(pid: int) -> list[int]:
    """Every descendant: a worker's session processes and the utterance decoders they fork."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            direct = [int(p) for p in f.read().split()]
    except OSError:
        return []
    return direct + [grandchild for child in direct for grandchild in children(child)]


def tree_memory(pid: int) -> dict[str, Any]:
    """PSS of a process and each of its descendants, and their total."""
    parent = memory(pid)
    per_child = []
    for kid in children(pid):
        try:
            per_child.append(memory(kid))
        except OSError:
            pass  # exited between listing and reading
    return {
        "parent": parent,
        "children": per_child,
        "total_pss_mb": parent["pss"] + sum(c["pss"] for c in per_child),
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0.0 for fewer than two distinct xs):
    how fast a sampled figure (memory over time) grows."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
