"""The pure modules stay pure: the replay arithmetic and the pipe messages import
neither Redis nor ``shared``, and the replay arithmetic no asyncio, so they are tested
without either. (Which package may import which: the import contract in
``pyproject.toml``, checked by ``lint-imports`` in ``make test``.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.env import REPO


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (``TYPE_CHECKING`` blocks included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", ["replay", "pipes"])
def test_replay_and_pipes_know_neither_redis_nor_the_gateway_side(module: str) -> None:
    names = imported(REPO / "decoder_worker" / f"{module}.py")
    assert not {n for n in names if n.split(".")[0] in ("redis", "shared")}
    if module == "replay":
        assert "asyncio" not in names
