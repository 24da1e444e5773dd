"""Replay points and the audio ledger: what a resumed decoder skips, what may be trimmed."""

from __future__ import annotations

import random

import pytest

from decoder_worker.replay import TRIM_AFTER_S, AudioLedger, ReplayPoint

RATE = 16000


def pcm(samples: int, first: int = 0) -> bytes:
    """``samples`` distinct s16 samples (their values count on from ``first``)."""
    return b"".join(((first + i) % 65536).to_bytes(2, "little") for i in range(samples))


def test_a_fresh_session_gets_every_byte_and_trims_nothing_yet() -> None:
    ledger = AudioLedger(ReplayPoint(), RATE)
    assert ledger.take("1-0", pcm(100)) == pcm(100)
    assert ledger.take("2-0", pcm(50, 100)) == pcm(50, 100)
    assert ledger.position == 150
    # the decoder still needs everything: the first entry is kept, nothing is trimmed
    point, trim_before = ledger.advance(0)
    assert point == ReplayPoint(0, "0-0", 0, 0)
    assert trim_before == "1-0"


def test_resume_in_the_middle_of_an_entry_skips_up_to_the_restart_sample() -> None:
    ledger = AudioLedger(ReplayPoint(segment=4, after="7-0", base=1000, sample=1030), RATE)
    assert ledger.position == 1000
    assert ledger.take("8-0", pcm(100, 1000)) == pcm(70, 1030)
    assert ledger.take("9-0", pcm(20, 1100)) == pcm(20, 1100)
    assert ledger.position == 1120


def test_a_skip_may_span_several_entries() -> None:
    ledger = AudioLedger(ReplayPoint(after="3-0", base=500, sample=750), RATE)
    assert ledger.take("4-0", pcm(100, 500)) == b""
    assert ledger.take("5-0", b"") == b""
    assert ledger.take("6-0", pcm(100, 600)) == b""
    assert ledger.take("7-0", pcm(100, 700)) == pcm(50, 750)
    assert ledger.take("8-0", pcm(10, 800)) == pcm(10, 800)


def test_a_sample_on_an_entry_boundary_drops_the_entry_before_it() -> None:
    ledger = AudioLedger(ReplayPoint(), RATE)
    for n, start in enumerate(range(0, 400, 100), start=1):
        ledger.take(f"{n}-0", pcm(100, start))
    point, trim_before = ledger.advance(200, last_final=2)
    # entries 1 and 2 end at or before sample 200: a replay reads from entry 3 on,
    # skipping nothing, and the stream may lose everything before entry 3
    assert point == ReplayPoint(segment=3, after="2-0", base=200, sample=200, replay_segment=3)
    assert trim_before == "3-0"
    point, trim_before = ledger.advance(299)  # inside entry 3: it stays
    assert point == ReplayPoint(segment=3, after="2-0", base=200, sample=299, replay_segment=3)
    assert trim_before == "3-0"
    point, trim_before = ledger.advance(400)  # the end of what was taken
    assert point == ReplayPoint(segment=3, after="3-0", base=300, sample=400, replay_segment=3)
    assert trim_before == "4-0"  # the last entry taken is always kept


def test_no_entries_taken_yet_keeps_the_point_where_it_was() -> None:
    start = ReplayPoint(segment=2, after="5-0", base=800, sample=900)
    ledger = AudioLedger(start, RATE)
    point, trim_before = ledger.advance(950, last_final=6)
    assert point == ReplayPoint(segment=7, after="5-0", base=800, sample=950, replay_segment=7)
    assert trim_before == ""
    assert ledger.point == point


def test_a_sample_below_the_base_is_raised_to_it() -> None:
    ledger = AudioLedger(ReplayPoint(after="1-0", base=100, sample=100), RATE)
    ledger.take("2-0", pcm(100, 100))
    point, trim_before = ledger.advance(40)
    assert point == ReplayPoint(segment=0, after="1-0", base=100, sample=100)
    assert trim_before == "2-0"


def test_saving_without_finals_waits_for_the_point_to_move_far_enough() -> None:
    ledger = AudioLedger(ReplayPoint(sample=RATE), RATE)
    far = RATE + int(TRIM_AFTER_S * RATE)
    assert not ledger.worth_saving(far - 1)
    assert ledger.worth_saving(far)
    ledger.take("1-0", pcm(far))
    ledger.advance(far)
    assert not ledger.worth_saving(far + 1)  # measured from the point saved last


def test_an_epoch_keeps_its_start_while_finals_move_on() -> None:
    """Inside a decoder epoch the decoder restarts at the epoch's first segment (2), while
    the finals delivered move on: a replay decodes segments 2 and 3 again and drops
    them."""
    ledger = AudioLedger(ReplayPoint(segment=2, replay_segment=2), RATE)
    ledger.take("1-0", pcm(100))
    ledger.take("2-0", pcm(100, 100))
    point, trim_before = ledger.advance(0, last_final=3, replay_segment=2)
    assert point == ReplayPoint(segment=4, after="0-0", base=0, sample=0, replay_segment=2)
    assert trim_before == "1-0"  # the epoch's audio stays


def test_fields_and_read_round_trip() -> None:
    point = ReplayPoint(
        segment=12, after="1712345678901-3", base=48000, sample=52345, replay_segment=10
    )
    meta = {k.encode(): str(v).encode() for k, v in point.fields().items()}
    meta[b"state"] = b"decoding"  # a record holds other fields too
    assert ReplayPoint.read(meta) == point
    assert ReplayPoint.read({}) == ReplayPoint()  # a record without a point: a fresh start
    # A record saved before decoder epochs: the decoder restarts at the next final.
    del meta[b"replay_segment"]
    assert ReplayPoint.read(meta).replay_segment == 12


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


@pytest.mark.parametrize("seed", range(40))
def test_takeovers_lose_nothing_and_trim_only_what_lies_behind(seed: int) -> None:
    """Workers take turns on one stream: each takes random-sized entries and advances at
    random samples, as its decoder would report them, then dies; the next one starts
    from the point saved last and reads only the entries after ``point.after``."""
    rng = random.Random(seed)
    sizes = [rng.choice([0, 1, 7, 160, 800, 4000, 8000]) for _ in range(rng.randint(1, 60))]
    audio = pcm(sum(sizes))
    entries: dict[str, tuple[int, bytes]] = {}  # entry id -> (first sample, pcm)
    start = 0
    for n, size in enumerate(sizes, start=1):
        entries[f"{n}-0"] = (start, audio[2 * start : 2 * (start + size)])
        start += size
    stream = list(entries)  # the ids still in the audio stream (XTRIM MINID removes some)
    saved = ReplayPoint()
    for _worker in range(rng.randint(1, 5)):
        started = saved
        ledger = AudioLedger(started, RATE)
        received = b""
        readable = [i for i in stream if _stream_id(i) > _stream_id(started.after)]
        dies_after = rng.randint(0, len(readable))
        for entry_id in readable[:dies_after]:
            received += ledger.take(entry_id, entries[entry_id][1])
            if rng.random() < 0.3:
                # the decoder has received up to position; it restarts no earlier than
                # the point it was started from. Boundaries are where bugs hide: the
                # end of what it received, and the start of an entry.
                low = ledger.point.sample
                high = max(low, ledger.position)
                starts = [entries[i][0] for i in readable if low <= entries[i][0] <= high]
                sample = rng.choice(
                    [rng.randint(low, high), high, rng.choice(starts) if starts else low]
                )
                final = rng.choice([None, ledger.point.segment + rng.randint(0, 2)])
                saved, trim_before = ledger.advance(sample, final)
                assert saved.base <= saved.sample
                if trim_before:
                    for i in [i for i in stream if _stream_id(i) < _stream_id(trim_before)]:
                        stream.remove(i)
                        first, data = entries[i]
                        assert first + len(data) // 2 <= saved.sample, "trimmed too much"
        # its decoder got exactly the audio from its replay point to where it stopped
        end = max(started.sample, ledger.position)
        assert received == audio[2 * started.sample : 2 * end]
    # a last worker replays to the end from the point saved last: the entries it needs
    # are all still there, and its decoder receives exactly the audio from the point on
    ledger = AudioLedger(saved, RATE)
    readable = [i for i in stream if _stream_id(i) > _stream_id(saved.after)]
    assert readable == [i for i in entries if _stream_id(i) > _stream_id(saved.after)]
    received = b"".join(ledger.take(i, entries[i][1]) for i in readable)
    assert received == audio[2 * saved.sample :]
    for i in entries:
        if i not in stream:
            first, data = entries[i]
            assert first + len(data) // 2 <= saved.sample
