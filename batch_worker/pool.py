"""``ksc batch-worker``: rq's worker pool on the batch queue, until SIGTERM.

rq's :class:`~rq.worker_pool.WorkerPool` forks ``jobs`` workers, replaces one that
dies, and on SIGTERM lets running jobs finish (rq's warm shutdown).

Jobs name the function rq runs (:data:`shared.jobs.JOB_FUNCTION`). Up to 0.1 that was
``shared.batch.transcribe_job``; jobs still queued under that name run through
:class:`BatchJob`, which resolves it to the same function. Kept for one release (0.2):
remove ``LEGACY_FUNCTIONS`` in 0.3.
"""

from __future__ import annotations

import logging
from typing import Any

from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from batch_worker import job
from shared.config import BatchWorkerSettings
from shared.jobs import connect_sync
from shared.keys import Keys

log = logging.getLogger(__name__)

#: Names rq jobs used for the job function before 0.2 -> the function now.
LEGACY_FUNCTIONS = {"shared.batch.transcribe_job": job.transcribe_job}


class BatchJob(Job):
    """An rq job that also runs under the job function's pre-0.2 name."""

    @property
    def func(self) -> Any:
        legacy = LEGACY_FUNCTIONS.get(self.func_name or "")
        return legacy if legacy is not None else super().func


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
