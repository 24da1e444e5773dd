"""The batch worker role (``ksc batch-worker``): whole files from rq, decoded by the cluster.

:mod:`batch_worker.job` is the job rq runs; :mod:`batch_worker.pool` runs rq's workers.
A job opens an ordinary session through the gateway's own path
(:class:`gateway.runner.SessionRunner`: admission, normalisation, the audio stream,
finals), without its HTTP server, and pushes the whole file as fast as Redis takes it,
so a decoder worker decodes it faster than real time. So this role sits a layer above
the gateway's code, which it reuses, and beside the gateway process, which it never
talks to.

**Capacity.** Live sessions come first: a job starts its session only while more than
``reserve_slots`` decoder slots are free cluster-wide (free minus waiting, as
:func:`shared.cluster.free_slots` counts them); otherwise it waits, polling with
backoff, in rq state ``started`` with phase ``waiting``. So with the default reserve
of 1 the last free slot always stays for a live client, and each batch process runs at
most ``jobs`` jobs at a time.
"""
