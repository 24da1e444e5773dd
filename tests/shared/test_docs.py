"""The README's configuration table is the settings classes' own description."""

from __future__ import annotations

import pytest

from shared import config
from tests.conftest import REPO


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
