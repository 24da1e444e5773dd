"""Where decoding waits for a CPU: at most N decoding processes decode at one moment.

A worker runs one decoding process per live session, often more than it has CPUs.
Left to the scheduler, all of them share the CPUs in short slices: a stream that ends
needs ≈70-100 ms of CPU to finalise, and at nine live streams on two CPUs it got a
fifth of a CPU, so its final came over a second after the end of the audio while the
CPUs were not even full (``docs/performance.md``). Through the gate, each piece of
decoding (a 100 ms block, a finalisation) waits for a free token and then runs on a
CPU of its own: the same work is done, queued in order of arrival instead of sliced,
as vosk-server's thread pool does.

The gate is a System V semaphore taken with ``SEM_UNDO``: when a process holding a
token dies (a session aborted, a decoder killed), the kernel gives the token back.
Python's standard library has no System V semaphores, so it calls libc directly.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CpuGate", "usable_cpus"]

_IPC_PRIVATE = 0
_IPC_CREAT = 0o1000
_IPC_RMID = 0
_GETVAL = 12
_SETVAL = 16
_SEM_UNDO = 0x1000


class _SemBuf(ctypes.Structure):
    _fields_ = [
        ("sem_num", ctypes.c_ushort),
        ("sem_op", ctypes.c_short),
        ("sem_flg", ctypes.c_short),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> int:
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota
    (a Kubernetes CPU limit), rounded up."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


class CpuGate:
    """``tokens`` decoders at a time, across every process forked after creation."""

    def __init__(self, tokens: int) -> None:
        if tokens < 1:
            raise ValueError("a gate needs at least one token")
        self.tokens = tokens
        self._id = _check(_libc.semget(_IPC_PRIVATE, 1, _IPC_CREAT | 0o600))
        _check(_libc.semctl(self._id, 0, _SETVAL, ctypes.c_int(tokens)))

    def _op(self, delta: int) -> None:
        op = _SemBuf(0, delta, _SEM_UNDO)
        while _libc.semop(self._id, ctypes.byref(op), 1) == -1:
            code = ctypes.get_errno()
            if code != errno.EINTR:  # a signal woke us: wait again
                raise OSError(code, os.strerror(code))

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold a token for the block's duration (blocks until one is free)."""
        self._op(-1)
        try:
            yield
        finally:
            self._op(1)

    def free(self) -> int:
        """Tokens not held right now."""
        return _check(_libc.semctl(self._id, 0, _GETVAL))

    def remove(self) -> None:
        """Delete the semaphore (the worker, on exit); holders' next use fails."""
        _check(_libc.semctl(self._id, 0, _IPC_RMID))
