"""``ksc status`` when the cluster is not where it looks: a clear message, no traceback."""

from __future__ import annotations

import subprocess

from harness.cluster import KSC, free_port


def test_status_without_a_reachable_redis_says_what_to_do() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [*KSC, "status", "--redis-url", url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "cannot read the cluster" in done.stderr and "--redis-url" in done.stderr
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr, "no password in the message"
