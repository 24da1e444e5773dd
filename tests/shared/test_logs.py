"""Log lines a client cannot break: every process logs through OneLineFormatter."""

from __future__ import annotations

import io
import logging

from shared.logs import OneLineFormatter


def _log(message: str, *args: object, exc: bool = False) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("test.onelines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        if exc:
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception(message, *args)
        else:
            logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_a_client_string_cannot_add_a_line() -> None:
    text = _log("refused %s", "/x\n2026-01-01 INFO forged\r\x1b[2J\u2028")
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "/x\\x0a2026-01-01 INFO forged\\x0d\\x1b[2J\\x2028" in text


def test_a_traceback_keeps_its_lines() -> None:
    text = _log("failed %s", "a\nb", exc=True)
    first, *rest = text.splitlines()
    assert first == "ERROR test.onelines: failed a\\x0ab"
    assert rest[0].startswith("Traceback") and "ValueError: boom" in rest[-1]


def test_the_cli_installs_it() -> None:
    from ksc.cli import _setup_logging

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        _setup_logging("info")
        assert any(isinstance(h.formatter, OneLineFormatter) for h in root.handlers)
    finally:
        root.handlers = saved
