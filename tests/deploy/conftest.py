"""Tools and renders for the deployment tests.

The tools come from ``scripts/deploy-tools .venv`` (run by ``make setup``): helm and
kubectl binaries, kubernetes-validate, hadolint, and @kubernetes-models/keda.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kaldi-stream-cluster"
K8S = REPO / "deploy" / "k8s"
BIN = Path(sys.executable).parent
KEDA_NODE_MODULES = BIN.parent / "tools" / "keda" / "node_modules"
# Kubernetes version the manifests are validated against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.30.0"
RELEASE, NAMESPACE = "ksc", "ksc"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
# What a cluster with KEDA and the Prometheus Operator reports (the chart's capability
# checks); `helm template` knows only the built-in kinds without them.
API_VERSIONS = ("keda.sh/v1alpha1/ScaledObject", "monitoring.coreos.com/v1/ServiceMonitor")


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed: run `scripts/deploy-tools .venv` (make setup)")
    return str(path)


def run(
    *cmd: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def helm_template() -> Callable[..., list[dict[str, Any]]]:
    cache: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def render(*values_files: str | Path, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        key = (*(str(v) for v in values_files), *sets)
        if key not in cache:
            args = [arg for v in values_files for arg in ("-f", str(v))]
            args += [arg for s in sets for arg in ("--set", s)]
            args += [arg for a in API_VERSIONS for arg in ("--api-versions", a)]
            out = run(tool("helm"), "template", RELEASE, str(CHART), "-n", NAMESPACE, *args).stdout
            cache[key] = docs_of(out)
        return cache[key]

    return render


def validate_builtin(docs: list[dict[str, Any]], label: str) -> None:
    """kubernetes-validate --strict on every built-in kind (CRDs are checked elsewhere)."""
    builtin = [d for d in docs if d["kind"] not in CRD_KINDS]
    text = "---\n".join(yaml.safe_dump(d) for d in builtin)
    proc = run(
        tool("kubernetes-validate"),
        "--strict",
        "-k",
        KUBERNETES_VERSION,
        "-",
        stdin=text,
        check=False,
    )
    passed = [line for line in proc.stdout.splitlines() if " passed for resource " in line]
    assert proc.returncode == 0 and len(passed) == len(builtin), (
        f"{label}: kubernetes-validate:\n{proc.stdout}\n{proc.stderr}"
    )


def validate_keda(docs: list[dict[str, Any]]) -> list[str]:
    keda = [d for d in docs if d["kind"] in {"ScaledObject", "TriggerAuthentication"}]
    if not keda:
        return []
    if not (KEDA_NODE_MODULES / "@kubernetes-models" / "keda").exists() or not shutil.which("node"):
        pytest.fail("@kubernetes-models/keda or node missing: run `scripts/deploy-tools .venv`")
    env = {**os.environ, "NODE_PATH": str(KEDA_NODE_MODULES)}
    script = Path(__file__).with_name("keda_validate.mjs")
    # ESM resolves packages from the script's location, not NODE_PATH: run a copy there.
    target = KEDA_NODE_MODULES.parent / "keda_validate.mjs"
    if not target.exists() or target.read_text() != script.read_text():
        target.write_text(script.read_text())
    proc = subprocess.run(
        ["node", str(target)],
        input=json.dumps(keda),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()
