"""The statistics the benchmarks report (pure)."""

from __future__ import annotations

from harness.measure import max_sustained, percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([], 95) == 0.0


def test_max_sustained_stops_at_the_first_failed_level() -> None:
    rows = [
        {"concurrency": 1, "sustained": True},
        {"concurrency": 2, "sustained": True},
        {"concurrency": 3, "sustained": False},
        {"concurrency": 4, "sustained": True},
    ]
    assert max_sustained(rows) == 2
    assert max_sustained(rows[2:]) == 0
