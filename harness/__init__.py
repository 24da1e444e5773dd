"""The test harness: what the tests, the benchmarks and ``scripts/`` share.

It sits above every package of the product (it starts their processes and talks to
them as clients do), and below ``tests/``, ``benchmarks/`` and ``scripts/``, which
never import one another. Modules:

* :mod:`harness.env` — where the repository, the model cache and the recordings are;
  the timeout unit of slow machines;
* :mod:`harness.cluster` — real processes: ``ksc worker``, ``ksc gateway``, ``ksc up``
  and a private ``redis-server``, and waiting for them to be ready;
* :mod:`harness.media` — audio: WAV reading, encoding with PyAV, synthetic speech;
* :mod:`harness.speech` — the sentences and phrase lists the tests speak, and the
  checks every kaldi-gstreamer-server transcript must pass;
* :mod:`harness.scoring` — character error rate against the recordings' manifests;
* :mod:`harness.measure` — CPU, memory and percentiles, from ``/proc``;
* :mod:`harness.failover` — a session whose owner is killed mid-stream;
* :mod:`harness.fuzz` — hostile clients, and what counts as surviving them;
* :mod:`harness.hostile` — the few heavy hostile clients a long run meets (bombs,
  sockets that never send or trickle), each with its outcome and bound;
* :mod:`harness.live` — live sessions of real recordings of any length, and their checks;
* :mod:`harness.up` — ``ksc up`` as a user runs it: its children, faults, Ctrl-C;
* :mod:`harness.multihost` — a cluster spread over network namespaces.
"""
