"""Client-controlled text made safe for a log line.

A request path is percent-decoded before anyone logs it, so ``%0A`` becomes a newline
and a client could append a line of its choosing to the log (``%0A2026-… INFO
session ended``), or hide one with terminal escapes. Every string a client chose —
paths, Origins, Host headers, model ids, content ids — goes through :func:`printable`
before it reaches a log call (``%r`` does the same job where a quoted form is wanted).
"""

from __future__ import annotations

#: Longer strings are cut (a path may be 8 KiB); the cut is marked with ``…``.
MAX_LOGGED_CHARS = 300


def printable(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` on one line: control and other non-printable characters as ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN``, backslash and double quote escaped (so a quoted
    field cannot be closed early), at most ``limit`` characters."""
    out: list[str] = []
    for ch in text[:limit]:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    if len(text) > limit:
        out.append("…")
    return "".join(out)
