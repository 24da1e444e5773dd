"""deploy/podman/values.yaml renders objects Kubernetes would accept (no podman needed)."""

from __future__ import annotations

from harness.pods import CHART, VALUES
from tests.deploy.conftest import docs_of, run, tool, validate_builtin


def test_the_local_values_render_valid_objects() -> None:
    out = run(tool("helm"), "template", "ksc", str(CHART), "-n", "ksc", "-f", str(VALUES)).stdout
    docs = docs_of(out)
    validate_builtin(docs, str(VALUES))
    kinds = {d["kind"] for d in docs}
    assert "ScaledObject" not in kinds and "HorizontalPodAutoscaler" not in kinds
    images = {
        c["image"]
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet"}
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {
        "localhost/ksc-gateway:0.1.0",
        "localhost/ksc-worker:0.1.0",
        "localhost/ksc-redis:bookworm",
    }
    (decoders,) = [
        d for d in docs if d["metadata"]["name"] == "ksc-decoder-ko" and d["kind"] == "Deployment"
    ]
    assert decoders["spec"]["replicas"] == 2
