"""Dockerfiles: hadolint (no Docker daemon here to build them) and the habits we rely on."""

from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import REPO, run, tool

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def test_hadolint_passes() -> None:
    assert DOCKERFILES
    run(tool("hadolint"), "--failure-threshold", "info", *map(str, DOCKERFILES))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.stem)
def test_dockerfile_habits(path) -> None:  # type: ignore[no-untyped-def]
    text = path.read_text()
    final = text.split("\nFROM ")[-1]  # the runtime stage
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base[1]), "pin the base by tag"
    assert re.search(r"^USER 10001:10001$", final, re.M), "run as the non-root user"
    assert re.search(r'^\s+CMD \["ksc", "check", ', final, re.M), "HEALTHCHECK with ksc check"
    assert 'ENTRYPOINT ["ksc"]' in final
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.exists() and ignore.read_text().splitlines()[1] == "*"
    if "worker" in path.name:
        assert "ksc model prepare" in final
        assert "apt-get purge -y --auto-remove libfst-tools" in final, (
            "no OpenFst tools at run time"
        )
    else:
        assert "[worker]" not in text, "the gateway image carries no Kaldi"
