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
``P:references``           hash        reference texts by content id (no expiry)
``P:key:{name}:sessions``  zset        an API key's live sessions, scored by expiry (ms)
``P:key:{name}:audio:<w>`` string      audio seconds an API key sent in period ``w``
``P:batch:<id>:audio``     string      a batch job's upload, until the job ends
``rq:queue:P-batch``       rq          batch jobs (``rq info``), ``rq:job:<id>`` each
=========================  ==========  ===================================================
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "ksc"
GROUP = "decoders"

#: A worker whose heartbeat is older than this is considered gone.
WORKER_TTL_S = 10
#: How often a worker refreshes its heartbeat and the leases of its sessions.
HEARTBEAT_INTERVAL_S = 1.0
#: Session keys expire this long after the session ended (results stay readable).
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
        """Reference transcripts posted to ``/client/dynamic/reference``."""
        return f"{self.prefix}:references"

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
