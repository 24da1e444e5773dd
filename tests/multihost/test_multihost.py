"""The cluster across hosts: gateway, Redis and two workers each in a network namespace,
the client in another (see conftest.py for the wiring).

1. Two concurrent sessions from the client's host run on the two worker hosts.
2. Pulling the owning worker's cable mid-session moves the session to the other worker:
   the transcript equals the no-fault run's, every segment number comes once, the record
   counts one takeover. The cut-off worker stays alive and cannot renew its lease (2 s),
   so the other worker takes over; once its cable is back, its renewal fails because
   ownership moved, and it leaves the session's results alone.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness.multihost import (
    KEY_PREFIX,
    LEASE_S,
    SCALE,
    WORKERS,
    ClientRun,
    Cluster,
    Network,
    session_with_cut,
    timeline,
)
from harness.speech import SENTENCES, assert_well_formed

#: The finals of a no-fault run of the speech, from the first test (or made on demand).
REFERENCE: dict[str, list[tuple[int, str]]] = {}


async def test_sessions_run_across_hosts(multihost: Cluster, speech_file: Path) -> None:
    runs = [ClientRun(multihost, speech_file) for _ in WORKERS]
    try:
        async with asyncio.timeout(60 * SCALE):
            for run in runs:
                await run.start()
            await asyncio.gather(*(run.finish() for run in runs))
    finally:
        for run in runs:
            run.kill()
    owners = [multihost.meta(run.sid, "owner") for run in runs]
    for run, owner in zip(runs, owners, strict=True):
        print(f"\nsession {run.sid} on {owner}:")
        print(timeline(run, {}))
        assert_well_formed(run.messages)
        assert run.close_code == 1000
        assert len(run.finals) == len(SENTENCES)
    assert sorted(owners) == sorted(WORKERS), "the two sessions ran on the two worker hosts"
    assert runs[0].finals == runs[1].finals, "the same audio, the same transcript"
    REFERENCE["finals"] = runs[0].finals


async def test_cutting_a_worker_link_moves_the_session(
    multihost: Cluster, network: Network, speech_file: Path
) -> None:
    multihost.wait_slots_free(WORKERS)
    if "finals" not in REFERENCE:  # run alone: make the no-fault transcript first
        clean = ClientRun(multihost, speech_file)
        async with asyncio.timeout(60 * SCALE):
            await clean.start()
            await clean.finish()
        REFERENCE["finals"] = clean.finals
    expected = REFERENCE["finals"]

    cut = await session_with_cut(multihost, network, speech_file)
    assert cut.cut_at, "the session reached its second segment"
    run, sid = cut.run, cut.run.sid
    other = next(w for w in WORKERS if w != cut.owner)
    print(f"\nsession {sid}: started on {cut.owner}, cable pulled mid-segment 1:")
    print(timeline(run, cut.marks()))
    if cut.taken_over_at:
        print(f"takeover recorded {cut.taken_over_at - cut.cut_at:.2f} s after the cut", end="; ")
    print(f"next message {cut.next_message_after_cut:.2f} s after the cut (lease {LEASE_S} s)")

    assert run.close_code == 1000
    assert_well_formed(run.messages)
    assert run.finals == expected, "the transcript of the no-fault run"
    assert [s for s, _ in run.finals] == list(range(len(expected))), "segments 0..n-1, once"
    assert multihost.meta(sid, "takeovers") == "1", "one takeover"
    assert multihost.meta(sid, "owner") == other, "the other worker finished it"

    # The cable back in: the cut-off worker's next renewal fails (ownership moved); it drops
    # the session, frees its slot and leaves the session's record and results alone.
    healed_at = network.heal(cut.owner)
    multihost.wait_slots_free((cut.owner,), 30)
    print(f"{cut.owner} back with a free slot {time.monotonic() - healed_at:.2f} s after heal")
    log = multihost.log(cut.owner).read_text(errors="replace")
    print("\n".join(f"  {cut.owner}| {line}" for line in log.splitlines() if "KALDI" not in line))
    assert "lease lost" in log, "the cut-off worker saw that it lost the session"
    results = multihost.redis_cli("XLEN", f"{KEY_PREFIX}:{{{sid}}}:results")
    assert results == str(len(expected)), "no final written twice"
    assert multihost.meta(sid, "state") == "done"
    assert multihost.meta(sid, "owner") == other
    assert multihost.meta(sid, "next_segment") == str(len(expected))
    assert multihost.meta(sid, "takeovers") == "1"
