"""Soak: ``ksc up`` as a user lives with it for an hour — load, faults, hostile clients.

    python -m benchmarks.soak [--minutes 60] [--streams 5] [--out benchmarks/results/soak.json]
    nohup .venv/bin/python -m benchmarks.soak > /tmp/soak.log 2>&1 &    # unattended
    python -m benchmarks.soak --minutes 3 --ttl-wait 0 --streams 2      # a smoke

``ksc up`` runs as a subprocess, in a process group of its own (a shell's foreground
job), on a free port with a private cache directory (its Redis keeps an AOF there; the
prepared model is linked from the usual cache). Then, for ``--minutes``:

* **load** — ``--streams`` live sessions at a time (~70 % of the ~7 streams this 2-core
  machine sustains), each real clips end to end with pauses between them
  (:mod:`harness.live`), paced in real time, ``EOS``, wait for the close. Stream 0 runs
  long sessions (40 % of the run: 24 min in the hour); the others 30 s to 3 min ones.
  A session refused with status 9 tries again 2 s later.
* **faults**, scaled with ``--minutes`` (times for the hour): ``kill -9`` of a worker at
  5, 15, 25, 35 and 45 min (always the same one, so the other lives through the
  segment); redis-server ``kill -9`` at 20 min (``ksc up`` should restart it from its
  AOF on the same port); Ctrl-C of the whole ``ksc up`` at 38 min and a restart on the
  same cache directory. Each fault records how long until ``/readyz`` answered 200 with
  every worker's slots again.
* **hostile clients** (:mod:`harness.hostile`), one action every 20 to 30 s, round-robin.
* **observers**: RSS of every ``ksc up`` child every 30 s (a worker's forks apart);
  every minute, the keys of ended sessions must carry a TTL.
* after the last session, a wait for the sessions' TTL (``--ttl-wait``, 10 min, part of
  the hour), then Redis must be back at its baseline.

Every check is written with its numbers to ``--out`` (``checks``), a summary is printed,
and the exit status is 1 if any check failed. Which checks there are and what they
compare: ``docs/reliability.md`` ("Soak").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from benchmarks.common import load_average, machine
from harness.env import CACHE, REPO, TESTDATA, TESTDATA_MORE
from harness.hostile import Hostile, Outcome
from harness.live import Clip, Plan, Run, judge, load_clips, plan, quiet, run_live
from harness.measure import children, slope
from harness.up import Up, alive, forks_pss, rss_mb
from ksc.local_redis import LocalRedis, free_port
from shared import cluster
from shared.keys import SESSION_TTL_S, Keys

KEYS = Keys()
MODEL = "ko"
#: The end state is read at least this long after the last session ended.
SETTLE_S = 15.0
#: A fault's recovery (``/readyz`` 200 with every slot) may take this long.
READY_LIMIT_S = 300.0
#: How long ``ksc up`` may take to exit after Ctrl-C (gateway drain 30 s + 20 s grace).
EXIT_LIMIT_S = 90.0
#: Memory growth allowed, MB per 10 minutes, for a process that lived this long.
RSS_SLOPE_LIMIT = 1.0
RSS_MIN_LIFETIME_S = 20 * 60
#: used_memory may end this much above its baseline (see ``redis_check``).
USED_MEMORY_TOLERANCE_MB = 2.0
#: Session CER may exceed that of the same clips decoded alone by this much: in all
#: completed sessions together, and in any one of them.
CER_TOLERANCE = 0.03
CER_TOLERANCE_ONE = 0.10


def now() -> float:
    return time.time()


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.total_s = args.minutes * 60.0
        self.scale = args.minutes / 60.0
        drain = max(30.0, min(120.0, 0.05 * self.total_s))
        #: sessions (good and hostile) start no later than this, seconds into the run
        self.load_s = self.total_s - args.ttl_wait - drain
        if self.load_s < 30:
            raise SystemExit("--minutes too short for --ttl-wait: less than 30 s of load")
        self.rng = random.Random(args.seed)
        self.cache = Path(args.cache or tempfile.mkdtemp(prefix="ksc-soak-"))
        self.port = args.port or free_port()
        self.up = Up(
            self.cache,
            self.port,
            args.workers,
            args.slots,
            log=Path(args.log or f"/tmp/ksc-soak-{os.getpid()}-up.log"),
            log_level=args.log_level,
        )
        self.t0 = 0.0  # start of the load, wall clock
        self.redis: Redis | None = None
        self.own_redis: LocalRedis | None = None
        self.keeper = ""  # the worker that is never killed, in this ksc up's lifetime
        self.victims: Iterator[str] = iter(())
        self.clips: list[Clip] = []
        self.pool: list[int] = []
        self.quiet: dict[int, dict[str, Any]] = {}
        self.faults: list[dict[str, Any]] = []
        self.sessions: list[dict[str, Any]] = []
        self.refusals: list[dict[str, Any]] = []
        self.hostile: list[dict[str, Any]] = []
        self.rss: list[dict[str, Any]] = []
        self.redis_samples: list[dict[str, Any]] = []
        #: the machine's load average: other work on it makes sessions fall behind
        self.load: list[dict[str, Any]] = []
        self.ttl_checks: list[dict[str, Any]] = []
        self.phases: dict[str, float] = {}
        self.redis_baseline: dict[str, Any] = {}
        self.redis_end: dict[str, Any] = {}
        self.last_session_end = 0.0
        self.stopping = asyncio.Event()

    def clock(self) -> float:
        """Seconds into the run (since the load started)."""
        return round(now() - self.t0, 2) if self.t0 else 0.0

    def rel(self, t: float) -> float:
        return round(t - self.t0, 2) if t else 0.0

    # --- the cluster -------------------------------------------------------------------

    async def start_cluster(self) -> dict[str, Any]:
        """``ksc up``; wait until it serves (ready, sample transcribed); connect."""
        started = now()
        self.up.start()
        up = self.up
        ready = await asyncio.to_thread(
            up.wait, lambda: not up.running() or up.fully_ready(), READY_LIMIT_S
        )
        if ready is None:
            raise RuntimeError(f"ksc up not ready in {READY_LIMIT_S:g} s; see {up.log}")
        # `ksc up` transcribes its sample after /readyz: wait for that too.
        starts = len(up.starts)
        await asyncio.to_thread(
            up.wait,
            lambda: not up.running() or self._log_count("serving; Ctrl-C") >= starts,
            120.0,
        )
        if not up.running():
            raise RuntimeError(f"ksc up exited ({up.proc and up.proc.returncode}); see {up.log}")
        await self.connect()
        workers = sorted((c for c in self.up.children() if c.role == "worker"), key=lambda c: c.pid)
        self.keeper = workers[0].name if workers else ""
        self.victims = itertools.cycle([w.name for w in workers[1:]] or [self.keeper])
        return {"ready_s": round(ready, 2), "serving_s": round(now() - started, 2)}

    def _log_count(self, text: str) -> int:
        try:
            return self.up.log.read_text(errors="replace").count(text)
        except OSError:
            return 0

    async def connect(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        url = self.up.redis_url()
        self.redis = Redis.from_url(url, socket_timeout=3, socket_connect_timeout=2)

    async def readyz_ok(self) -> bool:
        code, _ = await asyncio.to_thread(self.up.readyz)
        return code == 200

    async def heartbeat_of(self, pid: int) -> bool:
        assert self.redis is not None
        try:
            return any(w.pid == pid for w in await cluster.workers(self.redis, KEYS))
        except Exception:  # Redis away: not yet
            return False

    async def until(self, check: Callable[[], Awaitable[bool]], limit: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if await check():
                return round(time.monotonic() - started, 2)
            await asyncio.sleep(0.25)
        return None

    async def fully_ready(self) -> bool:
        return await asyncio.to_thread(self.up.fully_ready)

    # --- faults ------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        """When each fault is due, seconds into the run (the hour's times, scaled)."""
        minute = 60.0 * self.scale
        every = max(10 * minute, 60.0)
        events = [(every / 2 + k * every, "worker kill") for k in range(100)]
        events = [e for e in events if e[0] < self.load_s]
        events += [(20 * minute, "redis restart"), (38 * minute, "ctrl-c restart")]
        return sorted(e for e in events if e[0] < self.load_s)

    async def faults_loop(self) -> None:
        for due, kind in self.schedule():
            await asyncio.sleep(max(0.0, due - self.clock()))
            if self.clock() > self.load_s:
                self.faults.append({"kind": kind, "due_s": round(due, 1), "skipped": "late"})
                continue
            record: dict[str, Any] = {"kind": kind, "due_s": round(due, 1), "at_s": self.clock()}
            self.faults.append(record)  # under way: sessions ending now see it
            try:
                if kind == "worker kill":
                    await self.kill_worker(record)
                elif kind == "redis restart":
                    await self.restart_redis(record)
                else:
                    await self.ctrl_c_restart(record)
            except Exception as exc:  # a fault that could not be applied is reported
                record["error"] = f"{type(exc).__name__}: {exc}"
            record["recovered_at_s"] = self.clock()
            print(f"[{self.clock():7.1f}] fault {json.dumps(record)}", flush=True)

    async def kill_worker(self, record: dict[str, Any]) -> None:
        name = next(self.victims)
        victim = self.up.child(name)
        if victim is None:
            raise RuntimeError(f"{name} not running")
        forks = children(victim.pid)
        readyz_before = await self.readyz_ok()
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        record.update(
            {"worker": name, "pid": victim.pid, "kept": self.keeper, "forks_at_kill": len(forks)}
        )

        async def replaced() -> bool:
            new = self.up.child(name)
            return new is not None and new.pid != victim.pid and await self.heartbeat_of(new.pid)

        record["restarted_s"] = await self.until(replaced, READY_LIMIT_S)
        if await self.until(self.fully_ready, READY_LIMIT_S) is not None:
            record["ready_s"] = round(time.monotonic() - killed, 2)
        record["readyz_200_before"] = readyz_before
        await asyncio.sleep(5)
        record["forks_alive_after"] = sum(1 for pid in forks if alive(pid))

    async def restart_redis(self, record: dict[str, Any]) -> None:
        assert self.redis is not None
        old = self.up.child("redis")
        if old is None:
            raise RuntimeError("redis-server is not a child of ksc up")
        record["keys_before"] = await self.redis.dbsize()
        os.kill(old.pid, signal.SIGKILL)
        killed = time.monotonic()
        record["pid"] = old.pid

        async def back() -> bool:
            new = self.up.child("redis")
            if new is None or new.pid == old.pid:
                return False
            with contextlib.suppress(Exception):
                assert self.redis is not None
                return bool(await self.redis.ping())
            return False

        record["restarted_by_ksc_up_s"] = await self.until(back, 20.0)
        record["restarted_by"] = "ksc up" if record["restarted_by_ksc_up_s"] is not None else "soak"
        if record["restarted_by"] == "soak":
            # `ksc up` does not supervise its Redis: start one as an operator would, on
            # the same port and data directory (stopped again before any restart).
            port = int(self.up.redis_url().rsplit(":", 1)[1].split("/")[0])
            self.own_redis = LocalRedis(self.cache / "redis", port=port)
            await asyncio.to_thread(self.own_redis.start)
        record["down_s"] = round(time.monotonic() - killed, 2)
        if await self.until(self.fully_ready, READY_LIMIT_S) is not None:
            record["ready_s"] = round(time.monotonic() - killed, 2)
        with contextlib.suppress(Exception):
            record["keys_after"] = await self.redis.dbsize()

    async def ctrl_c_restart(self, record: dict[str, Any]) -> None:
        self.up.ctrl_c()
        code = await asyncio.to_thread(self.up.wait_exit, EXIT_LIMIT_S)
        record["exit_code"] = code
        record["exit_s"] = round(now() - (self.t0 + record["at_s"]), 2)
        record["leftover_processes"] = self.up.leftovers()
        self.up.kill_group()
        if code is None:
            await asyncio.to_thread(self.up.wait_exit, 10)
        if self.own_redis is not None:
            await asyncio.to_thread(self.own_redis.stop)
            self.own_redis = None
        record["start"] = await self.start_cluster()
        record["ready_s"] = round(now() - (self.t0 + record["at_s"]), 2)

    def ctrl_c_windows(self) -> list[tuple[float, float]]:
        return self.windows("ctrl-c restart")

    def faults_between(self, start: float, end: float) -> list[str]:
        """The faults under way at some moment from ``start`` to ``end``."""
        return [
            f"{f['kind']} @{f['at_s']:.0f}s"
            for f in self.faults
            if "at_s" in f and f["at_s"] <= end and f.get("recovered_at_s", float("inf")) >= start
        ]

    def windows(self, kind: str = "") -> list[tuple[float, float]]:
        """(start, end) of each fault (of ``kind``), seconds into the run; a fault
        under way ends at infinity."""
        return [
            (f["at_s"], f.get("recovered_at_s", float("inf")))
            for f in self.faults
            if "at_s" in f and (not kind or f["kind"] == kind)
        ]

    # --- good sessions -----------------------------------------------------------------

    def session_lengths(self) -> tuple[float, float, float]:
        """(long, shortest normal, longest normal) session lengths, seconds."""
        long_s = 0.4 * self.total_s
        lo = max(15.0, min(30.0, 0.1 * self.total_s))
        hi = max(lo + 5, min(180.0, 0.25 * self.total_s))
        return long_s, lo, hi

    async def stream_loop(self, slot: int) -> None:
        rng = random.Random(self.args.seed * 1000 + slot)
        pool = list(self.pool)
        rng.shuffle(pool)
        order = itertools.cycle(pool)
        long_s, lo, hi = self.session_lengths()
        await asyncio.sleep(slot * 2.0)
        for n in itertools.count():
            remaining = self.load_s - self.clock()
            want = long_s if slot == 0 else rng.uniform(lo, hi)
            want = min(want, remaining - 10)
            if want < lo:
                return
            the_plan = plan(self.clips, order, want)
            await self.good_session(slot, n, "long" if slot == 0 else "normal", the_plan)

    async def good_session(self, slot: int, n: int, kind: str, the_plan: Plan) -> None:
        record: dict[str, Any] = {
            "slot": slot,
            "n": n,
            "kind": kind,
            "clips": len(the_plan.clips),
            "audio_s": round(the_plan.seconds, 1),
            "attempts": [],
        }
        while True:
            run = await run_live(self.up.ws, the_plan.pcm, the_plan.seconds * 1.25 + 180)
            record["attempts"].append(self.attempt(run))
            self.last_session_end = max(self.last_session_end, now())
            if run.refused:
                await self.note_refusal(run, f"good {slot}.{n}")
            elif not run.never_connected:
                break
            if self.clock() > self.load_s:
                break
            await asyncio.sleep(2.0)
        record["outcome"] = outcome_of(run)
        record["verdict"] = judge(the_plan, self.clips, run.finals, self.quiet)
        last = record["attempts"][-1]
        record["faults_during"] = self.faults_between(last["started_s"], last["ended_s"])
        self.sessions.append(record)
        v = record["verdict"]
        print(
            f"[{self.clock():7.1f}] session {slot}.{n} {kind} {record['audio_s']} s: "
            f"{record['outcome']} finals {v['finals']} missing {len(v['missing'])} "
            f"dup {len(v['duplicates'])} uncovered {len(v['uncovered'])} "
            f"cer {v['cer']} (alone {v['quiet_cer']}) attempts {len(record['attempts'])}",
            flush=True,
        )

    def attempt(self, run: Run) -> dict[str, Any]:
        return {
            "sid": run.sid,
            "started_s": self.rel(run.started),
            "eos_s": self.rel(run.eos_at),
            "ended_s": self.rel(run.ended),
            "close_code": run.close_code,
            "status": run.status,
            "message": run.message[:200],
            "http_status": run.http_status,
            "error": run.error,
            "hung": run.hung,
            "finals": len(run.finals),
            "partials": run.partials,
            "max_gap_s": round(run.max_gap_s, 2),
            "close_after_eos_s": round(run.ended - run.eos_at, 2) if run.eos_at else None,
        }

    async def note_refusal(self, run: Run | Outcome, who: str) -> None:
        """Status 9: were there free slots on live workers? Read twice, 1.5 s apart,
        and keep the smaller figure, because a heartbeat lags a claim by up to 1 s."""
        first = await self.free_slots()
        await asyncio.sleep(1.5)
        second = await self.free_slots()
        free = min(first.get("free", 0), second.get("free", 0))
        self.refusals.append(
            {
                "who": who,
                "at_s": self.clock(),
                "free_slots": free,
                "live_workers": min(first.get("live_workers", 0), second.get("live_workers", 0)),
                "first": first,
                "second": second,
            }
        )

    async def free_slots(self) -> dict[str, Any]:
        """Free slots of workers whose process is alive and heartbeat fresh, minus the
        sessions waiting for one (what the gateway's admission counts)."""
        assert self.redis is not None
        try:
            workers = await cluster.workers(self.redis, KEYS)
            queued = await cluster.queued(self.redis, KEYS, MODEL)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        live = [
            w
            for w in workers
            if alive(w.pid) and w.heartbeat_age < 3 and not getattr(w, "draining", False)
        ]
        return {
            "workers": len(workers),
            "live_workers": len(live),
            "free_all": sum(w.slots_free for w in workers),
            "free_live": sum(w.slots_free for w in live),
            "queued": queued,
            "free": sum(w.slots_free for w in live) - queued,
        }

    # --- hostile clients ----------------------------------------------------------------

    async def is_live(self, sid: str) -> bool | None:
        assert self.redis is not None
        try:
            return await self.redis.zscore(KEYS.live, sid) is not None
        except Exception:
            return None

    async def hostile_loop(self) -> None:
        """One action every LO-HI seconds, round-robin; an action whose bound would
        outlast the drain after the load is passed over."""
        lo, hi = self.args.hostile_every
        speech = b"".join(self.clips[i].pcm for i in self.pool[:3])
        hostile = Hostile(self.up.ws, speech, random.Random(self.args.seed + 7), self.is_live)
        kinds = hostile.actions()
        actions = itertools.cycle(kinds)
        tasks: set[asyncio.Task[None]] = set()
        end = self.total_s - self.args.ttl_wait
        await asyncio.sleep(self.rng.uniform(lo, hi) / 2)
        while self.clock() < self.load_s:
            for _ in kinds:
                name, bound, action = next(actions)
                if self.clock() + bound <= end:
                    task = asyncio.create_task(self.one_hostile(name, action))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    break
            await asyncio.sleep(self.rng.uniform(lo, hi))
        if tasks:
            await asyncio.gather(*tasks)

    async def one_hostile(self, name: str, action: Callable[[], Awaitable[Outcome]]) -> None:
        at = self.clock()
        try:
            out = await action()
        except Exception as exc:  # the client itself broke: recorded, not a service failure
            out = Outcome(name, 0.0, error=f"client: {type(exc).__name__}: {exc}")
        if out.status == 9:
            await self.note_refusal(out, f"hostile {name}")
        record = {**out.record(), "at_s": at}
        record.pop("at", None)
        record["during_fault"] = self.faults_between(at, at + out.seconds)
        self.hostile.append(record)
        self.last_session_end = max(self.last_session_end, now())
        print(
            f"[{self.clock():7.1f}] hostile {out.kind}: {out.outcome} after {out.seconds} s "
            f"{(out.message or out.error)[:100]!r}",
            flush=True,
        )

    # --- observers --------------------------------------------------------------------

    async def rss_loop(self) -> None:
        while not self.stopping.is_set():
            t = self.clock()
            for c in self.up.children():
                rss = rss_mb(c.pid)
                if rss is None:
                    continue
                row: dict[str, Any] = {"t": t, "name": c.name, "role": c.role, "pid": c.pid}
                row["rss_mb"] = rss
                if c.role == "worker":
                    row["forks"], row["forks_pss_mb"] = forks_pss(c.pid)
                self.rss.append(row)
            self.load.append({"t": t, "load_average": load_average()})
            with contextlib.suppress(Exception):
                assert self.redis is not None
                info = await self.redis.info("memory")
                self.redis_samples.append(
                    {
                        "t": t,
                        "used_memory_mb": round(info["used_memory"] / 2**20, 3),
                        "dbsize": await self.redis.dbsize(),
                    }
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.args.sample_every)

    async def ttl_loop(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.args.key_check_every)
            if not self.stopping.is_set():
                self.ttl_checks.append(await self.ttl_check())

    async def ttl_check(self) -> dict[str, Any]:
        """Keys of sessions not in the live index must all carry a TTL. A key found
        without one is looked at again 2 s later (a session may be ending just then)."""
        assert self.redis is not None
        t = self.clock()
        try:
            keys = [k async for k in self.redis.scan_iter(f"{KEYS.prefix}:{{*", count=1000)]
            suspects = await self._without_ttl(keys)
            if suspects:
                await asyncio.sleep(2.0)
                suspects = await self._without_ttl(suspects)
        except Exception as exc:
            return {"t": t, "error": f"{type(exc).__name__}: {exc}"}
        sids = {sid_of(k) for k in keys}
        return {
            "t": t,
            "session_keys": len(keys),
            "sessions": len(sids),
            "violations": len(suspects),
            "examples": [k.decode(errors="replace") for k in suspects[:10]],
        }

    async def _without_ttl(self, keys: list[bytes]) -> list[bytes]:
        assert self.redis is not None
        if not keys:
            return []
        live = {m.decode() for m in await self.redis.zrange(KEYS.live, 0, -1)}
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
        ttls = await pipe.execute()
        return [k for k, ttl in zip(keys, ttls, strict=True) if ttl == -1 and sid_of(k) not in live]

    async def redis_state(self) -> dict[str, Any]:
        assert self.redis is not None
        info = await self.redis.info()
        shapes: Counter[str] = Counter()
        expiring_session_keys = no_ttl = 0
        async for key in self.redis.scan_iter(count=1000):
            shapes[shape(key.decode(errors="replace"))] += 1
            ttl = await self.redis.ttl(key)
            if ttl == -1:
                no_ttl += 1
            elif key.startswith(f"{KEYS.prefix}:{{".encode()):
                expiring_session_keys += 1
        return {
            "t": self.clock(),
            "dbsize": await self.redis.dbsize(),
            "keys_without_ttl": no_ttl,
            "session_keys_expiring": expiring_session_keys,
            "used_memory_mb": round(info["used_memory"] / 2**20, 3),
            "used_memory_scripts_mb": round(info.get("used_memory_scripts", 0) / 2**20, 3),
            "connected_clients": info.get("connected_clients"),
            "live_sessions": await self.redis.zcard(KEYS.live),
            "live_session_ids": [m.decode() for m in await self.redis.zrange(KEYS.live, 0, 9)],
            "shapes": dict(sorted(shapes.items())),
        }

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "args": {k: v for k, v in vars(self.args).items() if k != "out"},
            "machine": machine(),
            "load_average_before": load_average(),
            "ksc_up": {"argv": self.up.argv, "log": str(self.up.log), "port": self.port},
        }
        (self.cache / "models").parent.mkdir(parents=True, exist_ok=True)
        if (CACHE / "models").is_dir() and not (self.cache / "models").exists():
            (self.cache / "models").symlink_to(CACHE / "models")  # prepared once, reused
        self.clips = load_clips(TESTDATA, TESTDATA_MORE)
        if not self.clips:
            raise SystemExit(f"no recordings in {TESTDATA} or {TESTDATA_MORE}")
        self.pool = self.rng.sample(range(len(self.clips)), min(self.args.clips, len(self.clips)))
        print(f"starting ksc up on port {self.port}, cache {self.cache}", flush=True)
        report["ksc_up"]["first_start"] = await self.start_cluster()
        self.redis_baseline = await self.redis_state()
        print(f"baseline: {json.dumps(self.redis_baseline)}", flush=True)
        started = time.monotonic()
        self.quiet = await quiet(self.up.ws, self.clips, self.pool)
        report["quiet"] = {
            "clips": len(self.quiet),
            "seconds": round(time.monotonic() - started, 1),
            "cer": cer_of(self.quiet.values()),
            "failed": [self.clips[i].name for i, q in self.quiet.items() if q["status"]],
        }
        print(f"quiet decode: {json.dumps(report['quiet'])}", flush=True)

        self.t0 = now()
        faults = [(round(t), k) for t, k in self.schedule()] if self.args.faults else "none"
        print(f"load for {self.load_s:.0f} s of {self.total_s:.0f} s, faults: {faults}", flush=True)
        observers = [asyncio.create_task(self.rss_loop()), asyncio.create_task(self.ttl_loop())]
        work = [asyncio.create_task(self.stream_loop(i)) for i in range(self.args.streams)]
        if self.args.hostile:
            work.append(asyncio.create_task(self.hostile_loop()))
        faulting = asyncio.create_task(self.faults_loop()) if self.args.faults else None
        try:
            await asyncio.gather(*work)
            if faulting is not None:
                await faulting
            self.phases["load_ended_s"] = self.clock()
            self.ttl_checks.append({**await self.ttl_check(), "after_last_session": True})
            # At least SETTLE_S, so that sessions that just ended have left the live index.
            wait_until = max(
                self.last_session_end + max(self.args.ttl_wait, SETTLE_S), self.t0 + self.total_s
            )
            wait = max(0.0, wait_until - now())
            print(f"[{self.clock():7.1f}] waiting {wait:.0f} s (session TTL)", flush=True)
            await asyncio.sleep(wait)
            self.phases["ttl_wait_ended_s"] = self.clock()
            self.ttl_checks.append({**await self.ttl_check(), "final": True})
            self.redis_end = await self.redis_state()
        finally:
            self.stopping.set()
            await asyncio.gather(*observers, return_exceptions=True)
        report["load_average_after"] = load_average()
        report["phases"] = {"load_s": self.load_s, **self.phases}
        return report

    async def close(self) -> dict[str, Any]:
        if self.redis is not None:
            await self.redis.aclose()
        stopped = await asyncio.to_thread(self.up.stop, EXIT_LIMIT_S)
        if self.own_redis is not None:
            await asyncio.to_thread(self.own_redis.stop)
        self.up.close()
        if not self.args.cache and not self.args.keep_cache:
            shutil.rmtree(self.cache, ignore_errors=True)
        return stopped

    # --- the checks ------------------------------------------------------------------------

    def checks(self) -> dict[str, dict[str, Any]]:
        return {
            "finals_not_lost_or_duplicated": self.finals_check(),
            "good_sessions_completed": self.completed_check(),
            "restart_cut_sessions_ended": self.cut_check(),
            "no_refusal_with_free_slot": self.refusal_check(),
            "rss_flat_after_warmup": self.rss_check(),
            "redis_back_to_baseline": self.redis_check(),
            "ended_session_keys_have_ttl": self.ttl_summary(),
            "hostile_bounded": self.hostile_check(),
            "faults_recovered": self.faults_check(),
        }

    def cut(self, record: dict[str, Any]) -> bool:
        """The session did not complete, and its last attempt overlapped a Ctrl-C
        restart (from the SIGINT until the cluster was serving again)."""
        last = record["attempts"][-1]
        return record["outcome"] != "completed" and any(
            last["started_s"] <= end and last["ended_s"] >= start
            for start, end in self.ctrl_c_windows()
        )

    def finals_check(self) -> dict[str, Any]:
        done = [s for s in self.sessions if s["outcome"] == "completed" and not self.cut(s)]
        verdicts = [s["verdict"] for s in done]
        edits = sum(v["edits"] for v in verdicts)
        chars = sum(v["ref_chars"] for v in verdicts)
        quiet_cer = (
            sum((v["quiet_cer"] or 0.0) * v["ref_chars"] for v in verdicts) / chars
            if chars
            else 0.0
        )
        worse = [
            {"slot": s["slot"], "n": s["n"], "cer": s["verdict"]["cer"], "alone": q}
            for s in done
            if (q := s["verdict"]["quiet_cer"]) is not None
            and s["verdict"]["cer"] > q + CER_TOLERANCE_ONE
        ]
        numbers = {
            "sessions_completed": len(done),
            "finals": sum(v["finals"] for v in verdicts),
            "audio_s": round(sum(s["audio_s"] for s in done), 1),
            "sessions_with_missing_finals": sum(1 for v in verdicts if v["missing"]),
            "finals_missing": sum(len(v["missing"]) for v in verdicts),
            "sessions_with_duplicates": sum(1 for v in verdicts if v["duplicates"]),
            "finals_duplicated": sum(len(v["duplicates"]) for v in verdicts),
            "sessions_out_of_order": sum(1 for v in verdicts if not v["in_order"]),
            "clips": sum(s["clips"] for s in done),
            "clips_without_text": sum(len(v["uncovered"]) for v in verdicts),
            "uncovered_examples": [u for v in verdicts for u in v["uncovered"]][:10],
            "cer": round(edits / chars, 4) if chars else None,
            "cer_same_clips_alone": round(quiet_cer, 4) if chars else None,
            "cer_tolerance": CER_TOLERANCE,
            "sessions_cer_beyond_tolerance": worse,
        }
        ok = (
            bool(done)
            and numbers["finals_missing"] == 0
            and numbers["finals_duplicated"] == 0
            and numbers["sessions_out_of_order"] == 0
            and numbers["clips_without_text"] == 0
            and not worse
            and (not chars or edits / chars <= quiet_cer + CER_TOLERANCE)
        )
        return {"pass": ok, **numbers}

    def completed_check(self) -> dict[str, Any]:
        """Every good session not cut by the Ctrl-C restart ends normally."""
        others = [s for s in self.sessions if not self.cut(s)]
        bad = [s for s in others if s["outcome"] != "completed"]
        return {
            "pass": bool(others) and not bad,
            "sessions": len(others),
            "completed": len(others) - len(bad),
            "not_completed": len(bad),
            "outcomes": dict(Counter(s["outcome"] for s in others)),
            "failures": [
                {"slot": s["slot"], "n": s["n"], "faults_during": s["faults_during"]}
                | s["attempts"][-1]
                for s in bad[:10]
            ],
        }

    def cut_check(self) -> dict[str, Any]:
        cut = [s for s in self.sessions if self.cut(s)]
        hung = [s for s in cut if s["attempts"][-1]["hung"]]
        dup = [s for s in cut if s["verdict"]["duplicates"]]
        # The connection dropped (1006: no close frame) without a status message: the
        # client cannot tell a restart from a crash.
        dropped = [
            s
            for s in cut
            if s["attempts"][-1]["close_code"] == 1006 and not s["attempts"][-1]["status"]
        ]
        return {
            "pass": not hung and not dup and not dropped,
            "sessions": len(cut),
            "hung": len(hung),
            "with_duplicates": len(dup),
            "dropped_without_close_or_status": len(dropped),
            "endings": dict(Counter(s["outcome"] for s in cut)),
            "attempts": [{"slot": s["slot"], "n": s["n"], **s["attempts"][-1]} for s in cut],
        }

    def refusal_check(self) -> dict[str, Any]:
        wrong = [r for r in self.refusals if r["free_slots"] > 0]
        return {
            "pass": not wrong,
            "refusals": len(self.refusals),
            "with_free_slots": len(wrong),
            "without_live_worker": sum(1 for r in self.refusals if r["live_workers"] == 0),
            "all_slots_busy": sum(1 for r in self.refusals if r["free_slots"] <= 0),
            "examples": wrong[:10],
        }

    def rss_check(self) -> dict[str, Any]:
        warmup = min(300.0, 0.25 * self.total_s)
        segments = []
        by_process: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for row in self.rss:
            by_process.setdefault((row["name"], row["pid"]), []).append(row)
        for (name, pid), rows in sorted(by_process.items(), key=lambda i: i[1][0]["t"]):
            first, last = rows[0]["t"], rows[-1]["t"]
            after = [r for r in rows if r["t"] >= first + warmup]
            role = rows[0]["role"]
            segment: dict[str, Any] = {
                "name": name,
                "role": role,
                "pid": pid,
                "from_s": first,
                "to_s": last,
                "lifetime_s": round(last - first, 1),
                "samples": len(rows),
                "rss_mb_first": rows[0]["rss_mb"],
                "rss_mb_last": rows[-1]["rss_mb"],
                "rss_mb_max": max(r["rss_mb"] for r in rows),
            }
            if len(after) >= 2:
                ts = [r["t"] for r in after]
                segment["slope_mb_per_10min"] = round(
                    600 * slope(ts, [r["rss_mb"] for r in after]), 3
                )
            if role == "worker":  # forks come and go with sessions: no trend to fit
                segment["forks_max"] = max(r["forks"] for r in rows)
                segment["forks_pss_mb_max"] = max(r["forks_pss_mb"] for r in rows)
            segment["judged"] = (
                role in ("gateway", "worker")
                and last - first >= RSS_MIN_LIFETIME_S
                and "slope_mb_per_10min" in segment
            )
            if segment["judged"]:
                segment["pass"] = segment["slope_mb_per_10min"] < RSS_SLOPE_LIMIT
            segments.append(segment)
        judged = [s for s in segments if s["judged"]]
        return {
            "pass": all(s["pass"] for s in judged),
            "judged_segments": len(judged),
            "limit_mb_per_10min": RSS_SLOPE_LIMIT,
            "warmup_s": warmup,
            "min_lifetime_s": RSS_MIN_LIFETIME_S,
            "note": "" if judged else "no gateway or worker lived 20 min: slopes reported only",
            "segments": segments,
        }

    def redis_check(self) -> dict[str, Any]:
        """After the session TTL, the key count is back to the baseline's (less the
        session keys that were expiring then: ``ksc up``'s sample) and used_memory
        within 2 MB of it. The 2 MB are what Redis holds that is not data and does not
        grow with sessions: the Lua scripts loaded on first use, client buffers of
        the gateway's, workers' and batch worker's connections (more after restarts),
        jemalloc's partly used pages. One second of session audio left behind is 32 kB,
        so a leak of a minute of audio (or ~1000 small keys) would exceed it. With a
        shorter --ttl-wait, only keys without a TTL are compared."""
        base, end = self.redis_baseline, self.redis_end
        if not base or not end:
            return {"pass": False, "error": "no baseline or end state"}
        full = self.args.ttl_wait >= SESSION_TTL_S
        expected = base["dbsize"] - base["session_keys_expiring"]
        grew = round(end["used_memory_mb"] - base["used_memory_mb"], 3)
        numbers = {
            "ttl_wait_s": self.args.ttl_wait,
            "compared": "all keys and used_memory" if full else "keys without a TTL only",
            "baseline": base,
            "end": end,
            "keys_expected_at_most": expected,
            "used_memory_growth_mb": grew,
            "used_memory_tolerance_mb": USED_MEMORY_TOLERANCE_MB,
            "shapes_added": {
                k: v - base["shapes"].get(k, 0)
                for k, v in end["shapes"].items()
                if v > base["shapes"].get(k, 0)
            },
        }
        if full:
            ok = end["dbsize"] <= expected and grew <= USED_MEMORY_TOLERANCE_MB
        else:
            ok = end["keys_without_ttl"] <= base["keys_without_ttl"]
        ok = ok and end["live_sessions"] == 0
        return {"pass": ok, **numbers}

    def ttl_summary(self) -> dict[str, Any]:
        done = [c for c in self.ttl_checks if "error" not in c]
        violations = sum(c["violations"] for c in done)
        return {
            "pass": bool(done) and violations == 0,
            "checks": len(self.ttl_checks),
            "checks_failed_to_read": len(self.ttl_checks) - len(done),
            "violations": violations,
            "checks_with_violations": [c for c in done if c["violations"]][:10],
            "max_session_keys": max((c["session_keys"] for c in done), default=0),
        }

    def hostile_check(self) -> dict[str, Any]:
        # A fault under way (a worker or Redis down, a restart) may hold up the server's
        # reaction legitimately: a vanished client's session leaves the live index only
        # once a worker takes it over. Those are reported, not failed.
        hung = [h for h in self.hostile if h["hung"] and not h["during_fault"]]
        hung_in_fault = [h for h in self.hostile if h["hung"] and h["during_fault"]]
        errors = [h for h in self.hostile if h["server_error"]]
        by_kind: dict[str, dict[str, Any]] = {}
        for h in self.hostile:
            kind = by_kind.setdefault(h["kind"], {"n": 0, "outcomes": Counter(), "max_s": 0.0})
            kind["n"] += 1
            kind["outcomes"][h["outcome"]] += 1
            kind["max_s"] = max(kind["max_s"], h["seconds"])
        for kind in by_kind.values():
            kind["outcomes"] = dict(kind["outcomes"])
        return {
            "pass": not hung and not errors,
            "actions": len(self.hostile),
            "hung_beyond_bound": len(hung),
            "hung_during_a_fault": len(hung_in_fault),
            "server_5xx": len(errors),
            "by_kind": by_kind,
            "hung": [
                {k: h[k] for k in ("kind", "at_s", "bound_s", "messages", "during_fault")}
                for h in hung + hung_in_fault
            ],
        }

    def faults_check(self) -> dict[str, Any]:
        applied = [f for f in self.faults if "at_s" in f]
        bad = [f for f in applied if f.get("error") or f.get("ready_s") is None]
        return {
            "pass": not bad,
            "faults": len(applied),
            "skipped": sum(1 for f in self.faults if "skipped" in f),
            "not_recovered": bad,
            "ready_s": {f"{f['kind']} @{f['at_s']:.0f}s": f.get("ready_s") for f in applied},
        }


def outcome_of(run: Run) -> str:
    if run.completed:
        return "completed"
    if run.hung:
        return "hung"
    if run.refused:
        return "refused"
    if run.never_connected:
        return "never connected"
    if run.status:
        return f"status {run.status}"
    return f"close {run.close_code}" if run.close_code else "error"


def sid_of(key: bytes) -> str:
    text = key.decode(errors="replace")
    return text[text.find("{") + 1 : text.find("}")]


def shape(key: str) -> str:
    """A key with its ids blanked: ``ksc:{abc}:meta`` -> ``ksc:{*}:meta``."""
    key = re.sub(r"\{[^}]*\}", "{*}", key)
    key = re.sub(r"^(ksc:worker:|rq:worker:|rq:job:|rq:results:|rq:scheduler:).*", r"\1*", key)
    return key


def cer_of(rows: Any) -> float | None:
    rows = list(rows)
    chars = sum(r["chars"] for r in rows)
    return round(sum(r["edits"] for r in rows) / chars, 4) if chars else None


#: The lists of a failed check the summary shows a few items of.
EXAMPLES = (
    "failures",
    "examples",
    "hung",
    "attempts",
    "checks_with_violations",
    "not_recovered",
    "sessions_cer_beyond_tolerance",
    "uncovered_examples",
)


def summary(report: dict[str, Any]) -> str:
    lines = ["", "soak summary", "============"]
    lines.append(
        f"{report['args']['minutes']} min, {report['args']['streams']} streams, "
        f"load {report['phases'].get('load_s', 0):.0f} s; ksc up log {report['ksc_up']['log']}"
    )
    for f in report["faults"]:
        if "skipped" in f:
            lines.append(f"  fault {f['kind']} due {f['due_s']} s: skipped ({f['skipped']})")
            continue
        extra = {k: f.get(k) for k in ("restarted_by", "exit_code", "error") if f.get(k)}
        lines.append(
            f"  fault {f['kind']} at {f['at_s']:.0f} s: ready again after {f.get('ready_s')} s"
            + (f" {extra}" if extra else "")
        )
    for name, check in report["checks"].items():
        numbers = {
            k: v
            for k, v in check.items()
            if k != "pass" and isinstance(v, int | float | str) and v != ""
        }
        mark = "PASS" if check["pass"] else "FAIL"
        lines.append(f"  {mark} {name}: {json.dumps(numbers, ensure_ascii=False)}")
        if not check["pass"]:
            for field in EXAMPLES:
                for item in (check.get(field) or [])[:3]:
                    lines.append(f"      {field}: {json.dumps(item, ensure_ascii=False)[:300]}")
            if name == "rss_flat_after_warmup":
                for seg in check["segments"]:
                    if seg["judged"] and not seg["pass"]:
                        lines.append(f"      segment: {json.dumps(seg)[:300]}")
    hostile = report["checks"]["hostile_bounded"]["by_kind"]
    for kind, h in sorted(hostile.items()):
        lines.append(f"    hostile {kind}: {h['outcomes']} (max {h['max_s']} s)")
    if report.get("interrupted"):
        lines.append(f"  INTERRUPTED: {report['interrupted']}")
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="wall time of the run")
    parser.add_argument("--streams", type=int, default=5, help="live sessions at a time")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks/results/soak.json",
        help="where the results go (JSON)",
    )
    parser.add_argument(
        "--ttl-wait",
        type=float,
        default=SESSION_TTL_S + 30,
        help="seconds to wait after the last session before comparing Redis with its "
        "baseline (part of --minutes); below the session TTL only keys without a TTL are "
        "compared",
    )
    parser.add_argument("--workers", type=int, default=2, help="ksc up --workers")
    parser.add_argument("--slots", type=int, default=4, help="ksc up --slots")
    parser.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    parser.add_argument("--cache", help="ksc up's cache directory (default: a new temporary one)")
    parser.add_argument("--keep-cache", action="store_true", help="keep the temporary cache")
    parser.add_argument("--log", help="ksc up's output (default /tmp/ksc-soak-PID-up.log)")
    parser.add_argument("--log-level", default="warning", help="ksc up --log-level")
    parser.add_argument("--clips", type=int, default=1000, help="use at most N recordings")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--hostile-every",
        type=lambda s: tuple(float(x) for x in s.split("-")),
        default=(20.0, 30.0),
        help="seconds between hostile actions, LO-HI",
    )
    parser.add_argument("--sample-every", type=float, default=30.0, help="RSS sampling, s")
    parser.add_argument("--key-check-every", type=float, default=60.0, help="TTL check, s")
    parser.add_argument(
        "--faults",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="kill workers and Redis, Ctrl-C and restart ksc up",
    )
    parser.add_argument(
        "--hostile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the hostile clients beside the load",
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    soak = Soak(args)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    report: dict[str, Any] = {}
    try:
        report = await soak.run()
    except (asyncio.CancelledError, Exception) as exc:
        # Still write what was seen: a cluster that died is a finding, not a crash.
        if task is not None and isinstance(exc, asyncio.CancelledError):
            task.uncancel()
        report["interrupted"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
        print(report["traceback"], f"interrupted: {report['interrupted']}", flush=True)
    finally:
        report["stop"] = await soak.close()
    report.update(
        {
            "faults": soak.faults,
            "sessions": soak.sessions,
            "refusals": soak.refusals,
            "hostile": soak.hostile,
            "rss_samples": soak.rss,
            "redis_samples": soak.redis_samples,
            "load_samples": soak.load,
            "ttl_checks": soak.ttl_checks,
        }
    )
    report.setdefault("args", {k: str(v) for k, v in vars(args).items()})
    report.setdefault("phases", {"load_s": soak.load_s})
    report.setdefault("ksc_up", {"log": str(soak.up.log)})
    report["checks"] = soak.checks()
    report["passed"] = all(c["pass"] for c in report["checks"].values()) and not report.get(
        "interrupted"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(summary(report), flush=True)
    print(f"written {args.out}", flush=True)
    return 0 if report["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(amain(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
