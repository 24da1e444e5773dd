"""Logging helpers every role uses (only the CLI configures logging, with
:class:`OneLineFormatter`)."""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any

#: What could end a log line early or hide text: C0 and C1 controls, DEL, and Unicode's
#: line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with every character that could break or forge a log line escaped
    (``\n`` -> ``\\x0a``)."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class OneLineFormatter(logging.Formatter):
    """Every message on one line, whatever a client put into it: a percent-decoded
    path with ``%0A`` cannot append a forged line to the log. A traceback, added after
    the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


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
