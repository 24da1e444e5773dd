"""Logging helpers both roles use (only the CLI configures logging)."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """A module logger whose lines start with ``[session id]``, so one session's life
    can be followed through a gateway's or a worker's log with one grep."""

    def __init__(self, logger: logging.Logger, sid: str) -> None:
        super().__init__(logger, {"sid": sid})
        self.sid = sid

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self.sid}] {msg}", kwargs
