"""deploy/k8s: rendered by kubectl kustomize, validated, and kept equal to the chart's default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import K8S, docs_of, run, tool, validate_builtin, validate_keda

COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if p.is_dir())


def kustomize(tmp_path: Path, component: str | None) -> list[dict[str, Any]]:
    if component is None:
        return docs_of(run(tool("kubectl"), "kustomize", str(K8S)).stdout)
    base = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{base}]\ncomponents: [{base}/components/{component}]\n"
    )
    out = run(
        tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(tmp_path)
    )
    return docs_of(out.stdout)


@pytest.mark.parametrize("component", [None, *COMPONENTS], ids=lambda c: c or "base")
def test_kustomize_renders_valid_objects(tmp_path: Path, component: str | None) -> None:
    docs = kustomize(tmp_path, component)
    validate_builtin(docs, f"deploy/k8s {component or 'base'}")
    validate_keda(docs)
    kinds = {d["kind"] for d in docs}
    if component == "hpa":
        assert "ScaledObject" not in kinds and "TriggerAuthentication" not in kinds
    if component in ("external-redis", "redis-sentinel"):
        assert "StatefulSet" not in kinds and "NetworkPolicy" not in kinds
    else:
        assert "NetworkPolicy" in kinds
    # No password is shipped: the Secret is the operator's (docs/deploy.md).
    assert "Secret" not in kinds
    if component == "redis-sentinel":
        (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
        assert {t["type"] for t in so["spec"]["triggers"]} == {"redis-sentinel-streams"}


def _normalise(doc: dict[str, Any]) -> dict[str, Any]:
    """Drop what legitimately differs: Helm's labels, comments, generated secret data."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            for key in ("labels", "matchLabels"):
                if isinstance(out.get(key), dict):
                    out[key] = {
                        k: str(v)
                        for k, v in out[key].items()
                        if k not in ("helm.sh/chart", "app.kubernetes.io/managed-by")
                    }
            out.pop("annotations", None) if "checksum/config" in str(
                out.get("annotations")
            ) else None
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    doc = walk(doc)
    if doc["kind"] == "Secret":
        doc.pop("data", None), doc.pop("stringData", None)
        doc["metadata"].pop("annotations", None)
    return doc


def test_no_password_or_placeholder_is_shipped() -> None:
    for path in K8S.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert "CHANGE-ME" not in text and "stringData" not in text, path


def test_plain_manifests_match_chart_default(tmp_path: Path, helm_template) -> None:  # type: ignore[no-untyped-def]
    plain = {
        (d["kind"], d["metadata"]["name"]): _normalise(d)
        for d in kustomize(tmp_path, None)
        if d["kind"] != "Namespace"
    }
    # What only Helm makes: the generated password Secret (plain manifests require the
    # operator's own) and the `helm test` Pod.
    chart = {
        (d["kind"], d["metadata"]["name"]): _normalise(d)
        for d in helm_template()
        if d["kind"] not in ("Secret", "Pod")
    }
    assert sorted(plain) == sorted(chart)
    for key, doc in chart.items():
        assert plain[key] == doc, f"{key} differs between deploy/k8s and the chart"
