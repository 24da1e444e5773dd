"""``ksc batch-worker``: rq's worker pool on the batch queue, until SIGTERM.

rq's :class:`~rq.worker_pool.WorkerPool` forks ``jobs`` workers, replaces one that
dies, and on SIGTERM lets running jobs finish (rq's warm shutdown).

**Only known job functions run.** An rq job names the function it runs as a dotted
string, and plain rq imports whatever that string names (``Job.func`` calls
``rq.utils.import_attribute``) and calls it with the job's arguments: the JSON
serializer keeps arguments readable, but a JSON job naming ``subprocess.getoutput``
runs a shell command. So the pool runs its jobs as :class:`BatchJob`, which looks the
name up in :data:`JOB_FUNCTIONS` and fails any other job with :class:`UnknownJob` —
before anything is imported or called. Callbacks (``on_success``, ``on_failure``,
``on_stopped``) are the same kind of dotted name; batch jobs have none, so a job that
names one fails the same way and the callback is never imported.

That removes the code-execution path through rq; it does not make Redis untrusted.
Whoever can write this Redis still controls sessions, results and the queue (which
jobs run, on which stored audio): Redis is the trust boundary (``docs/security.md``).

Up to 0.1 jobs named ``shared.batch.transcribe_job``; jobs still queued under that
name run the same function. Kept for one release (0.2): remove
:data:`LEGACY_FUNCTIONS` in 0.3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from batch_worker import job
from shared.config import BatchWorkerSettings
from shared.jobs import JOB_FUNCTION, connect_sync
from shared.keys import Keys

log = logging.getLogger(__name__)

#: Names rq jobs used for the job function before 0.2 -> the function now.
LEGACY_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "shared.batch.transcribe_job": job.transcribe_job,
}
#: Every function a batch worker runs, by the name a job gives it. Nothing else runs.
JOB_FUNCTIONS: dict[str, Callable[..., Any]] = {
    JOB_FUNCTION: job.transcribe_job,
    **LEGACY_FUNCTIONS,
}


class UnknownJob(Exception):
    """A job names a function or callback this worker does not run; the job fails."""


class BatchJob(Job):
    """An rq job that runs only the functions of :data:`JOB_FUNCTIONS`.

    rq (3.0) resolves a job's function in exactly one place, the ``func`` property, which
    :meth:`~rq.job.Job.perform` reads in the work horse; the three callback properties
    are the only other names rq imports. All four are overridden here, so
    ``import_attribute`` is never reached with a name that came from Redis.
    """

    @property
    def func(self) -> Callable[..., Any]:
        name = self.func_name or ""
        function = JOB_FUNCTIONS.get(name)
        if function is None:
            raise UnknownJob(
                f"job {self.id} names function {name!r}, which the batch worker does not"
                f" run (it runs only {', '.join(sorted(JOB_FUNCTIONS))})"
            )
        if self.instance is not None:
            raise UnknownJob(f"job {self.id} calls {name!r} as a method of an object")
        callbacks = [
            c
            for c in (
                self._success_callback_name,
                self._failure_callback_name,
                self._stopped_callback_name,
            )
            if c
        ]
        if callbacks:
            raise UnknownJob(
                f"job {self.id} names callback(s) {', '.join(map(repr, callbacks))},"
                " which the batch worker does not run"
            )
        return function

    # rq runs callbacks after the job (the failure callback also after UnknownJob):
    # they resolve to nothing, whatever name the job carries.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None


def run(settings: BatchWorkerSettings) -> int:
    """Serve the batch queue with ``settings.jobs`` rq workers; returns the exit code."""
    job.configure(settings)
    keys = Keys(settings.prefix)
    connection = connect_sync(settings.redis_url)
    log.info(
        "batch worker: %d job(s) at a time on queue %s, keeping %d slot(s) for live sessions",
        settings.jobs,
        keys.batch_queue,
        settings.reserve_slots,
    )
    pool = WorkerPool(
        [keys.batch_queue],
        connection=connection,
        num_workers=max(1, settings.jobs),
        serializer=JSONSerializer,
        job_class=BatchJob,
    )
    pool.start(burst=False, logging_level=settings.log_level.upper())
    return 0
