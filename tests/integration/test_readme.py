"""The README's quick tour, run as written against the test cluster.

Every command of the tour's ``sh`` block runs in a shell, with the block's placeholders
(port 8888, ``FILE.wav``, ``URL``, ``ID``, …) replaced by the test cluster's values; each
must exit 0 and print what the tour says it prints. A command the table below cannot
place fails the test, so the tour cannot drift from the code.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

from harness.cluster import Cluster
from harness.env import REPO, UNIT
from harness.media import CODECS, encode
from tests.integration.conftest import PREFIX


def tour_commands() -> list[str]:
    """The commands of the first ``sh`` block after ``## Quick tour``, comments dropped."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    tour = readme[readme.index("## Quick tour") :]
    block = tour[tour.index("```sh\n") + 6 : tour.index("\n```", tour.index("```sh\n"))]
    commands = []
    for line in block.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command:
            commands.append(command)
    return commands


def _placed(command: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        if placeholder.isalpha():  # a word: not inside another word or path
            command = re.sub(rf"(?<![\w/.-]){placeholder}(?![\w-])", value, command)
        else:
            command = command.replace(placeholder, value)
    return command


async def _run(command: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_shell(
        command,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120 * UNIT):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_the_tour_is_there() -> None:
    commands = tour_commands()
    assert len(commands) >= 8, commands
    assert any("ksc transcribe" in c for c in commands)
    assert any("/client/dynamic/recognize" in c for c in commands)


async def test_quick_tour_runs_as_written(running: Cluster, tmp_path: Path) -> None:
    sample = REPO / "shared" / "samples" / "ko-sample.wav"
    pcm = sample.read_bytes()[44:]
    (tmp_path / "FILE.wav").write_bytes(sample.read_bytes())
    (tmp_path / "talk.mp3").write_bytes(encode(pcm, 16000, CODECS["mp3"]))
    worker_id = next(iter(running.workers))
    values = {
        ".venv/bin/": f"{REPO}/.venv/bin/",
        "shared/samples/": f"{REPO}/shared/samples/",
        "127.0.0.1:8888": f"127.0.0.1:{running.port}",
        "URL": running.redis_url,
        "ID": worker_id,
    }
    env = {
        **os.environ,
        "KSC_REDIS_URL": running.redis_url,
        "KSC_PREFIX": PREFIX,
        "KSC_URL": running.ws,
    }
    for command in tour_commands():
        placed = _placed(command, values)
        assert "8888" not in placed, f"not placed: {command}"
        code, out, err = await _run(placed, tmp_path, env)
        assert code == 0, f"{command}\n{out}\n{err}"
        if "ksc transcribe" in command and "-o " not in command:
            assert out.strip(), command
        if "--json" in command:
            assert "workers" in json.loads(out), command
        if "recognize" in command:
            assert json.loads(out)["status"] == 0, out
    srt = (tmp_path / "talk.srt").read_text(encoding="utf-8")
    assert re.search(r"^1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n\S", srt, re.M), srt
