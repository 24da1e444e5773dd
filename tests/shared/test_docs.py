"""The README agrees with the code: its settings tables, its opening, its compatibility
table's tests."""

from __future__ import annotations

import re

import pytest

from harness.env import REPO
from shared import config


@pytest.mark.parametrize("cls", [config.GatewaySettings, config.WorkerSettings, config.UpSettings])
def test_every_setting_is_in_the_readme(cls: type) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for flag, env, default, help_text in config.table(cls):
        row = f"| `{flag}` | `{env}` | `{default}` | {help_text} |"
        assert row in readme, row


def test_readme_opens_with_the_two_commands() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    block = lines[lines.index("```sh") + 1 : lines.index("```sh") + 3]
    assert [line.split()[0:2] for line in block] == [["make", "up"], ["make", "test"]]


def test_every_compatibility_row_names_a_test_that_exists() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Compatibility") : readme.index("## Deploy on Kubernetes")]
    rows = [line for line in section.splitlines() if line.startswith("|") and "---" not in line]
    named = 0
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if cells[1] == "status":
            continue
        refs = re.findall(r"`([\w/]+\.py)::(\w+)`", cells[-1])
        if cells[1] in {"supported", "differs", "supported, differs", "added"}:
            assert refs, f"no test named for: {cells[0]}"
        for file, name in refs:
            matches = [
                p for p in (REPO / "tests").rglob("*.py") if p.as_posix().endswith(f"/{file}")
            ]
            assert len(matches) == 1, f"{file}: {matches}"
            assert re.search(rf"^(?:async )?def {name}\(", matches[0].read_text(), re.M), (
                f"{file}::{name} does not exist"
            )
            named += 1
    assert named >= 40


def _named_tests(text: str) -> list[tuple[str, str]]:
    """``path.py::name`` references in ``text``, a bare ``::name`` meaning the last path."""
    refs, last = [], ""
    for file, name in re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", text):
        last = file or last
        refs.append((last, name))
    return refs


@pytest.mark.parametrize("section", ["## Per-key limits", "## Bounds"])
def test_every_bound_in_security_md_names_a_test_that_crosses_it(section: str) -> None:
    """docs/security.md: each bound, a test that tries to cross it, and that test exists."""
    doc = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    start = doc.index(section)
    table = doc[start : doc.index("\n## ", start + 1)]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    for row in rows[1:]:  # the header row names no test
        refs = _named_tests(row)
        assert refs, f"no test named for: {row[:80]}"
        for file, name in refs:
            source = (REPO / file).read_text(encoding="utf-8")
            assert re.search(rf"^(?:async )?def {name}\(", source, re.M), f"{file}::{name}"
