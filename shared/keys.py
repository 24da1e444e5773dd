"""Every Redis name the cluster uses, in one place.

Keys of one session carry a hash tag (``{sid}``) so that in Redis Cluster they live in
one slot and a worker's per-session commands never cross slots. Cluster-wide keys
(the sessions streams, the worker index, counters) each sit in their own slot and are
only ever touched one key per command.

=========================  ==========  ===================================================
key                        type        purpose
=========================  ==========  ===================================================
``P:sessions:<model>``     stream      one entry per new session; group ``decoders``
``P:{sid}:audio``          stream      normalised PCM chunks, then an end marker
``P:{sid}:meta``           hash        state, model, owner, audio seconds, next segment
``P:{sid}:events``         pub/sub     partials, finals, status messages (low latency)
``P:{sid}:results``        stream      finals, durable, for catch-up and de-duplication
``P:worker:<id>``          hash + TTL  heartbeat: host, pid, slots, models
``P:workers``              zset        worker ids scored by last heartbeat (an index)
``P:models``               hash        model id -> JSON info (sample rate) from workers
``P:live``                 zset        live session ids scored by creation time
``P:stats``                hash        counters: requests processed, rejects by reason
``P:references``           hash        older gateways: every reference, shared; no longer read
``P:key:{name}:sessions``  zset        an API key's live sessions, scored by expiry (ms)
``P:key:{name}:audio:<w>`` string      audio seconds an API key sent in period ``w``
``P:key:{name}:refs``      hash + TTL  an API key's reference texts by content id
``P:key:{name}:refs:at``   zset + TTL  its content ids scored by last write (ms), for eviction
``P:key:{name}:batch``     zset + TTL  its pending batch jobs, ``JOB:BYTES`` by expiry (s)
``P:batch:<id>:audio``     string      a batch job's upload, until the job ends
``rq:queue:P-batch``       rq          batch jobs (``rq info``), ``rq:job:<id>`` each
=========================  ==========  ===================================================
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "ksc"
GROUP = "decoders"

#: How often a worker refreshes its heartbeat and the leases of its sessions.
HEARTBEAT_INTERVAL_S = 1.0
#: A worker counts as live (admission, readiness, status) while its last heartbeat, in
#: Redis server time, is younger than this: five missed beats.
WORKER_LIVE_S = 5.0
#: A worker's heartbeat record expires (and leaves the index) this long after its last
#: beat: what a worker killed without a goodbye leaves behind, for ``ksc status``.
WORKER_TTL_S = 10
#: Session keys expire this long after the session ended (results stay readable), and
#: this long after the last sign of life of a session that is still running: its owner
#: renews them with its lease every heartbeat, the gateway with every audio append.
SESSION_TTL_S = 600
#: An uploaded batch file not picked up by a job within this long is dropped.
BATCH_AUDIO_TTL_S = 7 * 86400


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix; build once from settings and pass around."""

    prefix: str = DEFAULT_PREFIX

    def sessions(self, model: str) -> str:
        return f"{self.prefix}:sessions:{model}"

    def audio(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:audio"

    def meta(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:meta"

    def events(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:events"

    def results(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:results"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def models(self) -> str:
        return f"{self.prefix}:models"

    @property
    def live(self) -> str:
        return f"{self.prefix}:live"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def references(self) -> str:
        """Every client's reference transcripts, as older gateways kept them (not read)."""
        return f"{self.prefix}:references"

    def key_references(self, name: str) -> str:
        """One API key's reference transcripts (hash: content id -> entry)."""
        return f"{self.prefix}:key:{{{name}}}:refs"

    def key_reference_times(self, name: str) -> str:
        """When each of one API key's references was last written (zset, ms)."""
        return f"{self.prefix}:key:{{{name}}}:refs:at"

    def key_batch(self, name: str) -> str:
        """One API key's pending batch jobs (zset: ``JOB_ID:BYTES`` scored by expiry, s)."""
        return f"{self.prefix}:key:{{{name}}}:batch"

    @property
    def batch_queue(self) -> str:
        """The rq queue of batch jobs (rq keeps it as ``rq:queue:<name>``)."""
        return f"{self.prefix}-batch"

    def batch_audio(self, job_id: str) -> str:
        """A batch job's uploaded audio, deleted when the job ends."""
        return f"{self.prefix}:batch:{job_id}:audio"

    def key_sessions(self, name: str) -> str:
        """Live sessions of one API key (zset: sid scored by expiry, Redis time, ms)."""
        return f"{self.prefix}:key:{{{name}}}:sessions"

    def key_audio(self, name: str, window: int) -> str:
        """Audio seconds one API key sent in one period (a float string with a TTL)."""
        return f"{self.prefix}:key:{{{name}}}:audio:{window}"

    def session_keys(self, sid: str) -> tuple[str, ...]:
        """The keys that expire together when a session ends."""
        return (self.audio(sid), self.meta(sid), self.results(sid))

    def sid_from_events(self, channel: str) -> str:
        """Inverse of :meth:`events`, for the gateway's pub/sub dispatcher."""
        head = f"{self.prefix}:{{"
        tail = "}:events"
        if not (channel.startswith(head) and channel.endswith(tail)):
            raise ValueError(f"not an events channel: {channel!r}")
        return channel[len(head) : -len(tail)]
