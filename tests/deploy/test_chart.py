"""The Helm chart: lint, every values scenario rendered and schema-validated, `fail`s."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.conftest import (
    API_VERSIONS,
    CHART,
    KUBERNETES_VERSION,
    REPO,
    run,
    tool,
    validate_builtin,
    validate_keda,
)

SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
INVALID = Path(__file__).with_name("invalid")


def test_lint_strict() -> None:
    out = run(tool("helm"), "lint", "--strict", str(CHART)).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda v: v.stem if v else "default")
def test_scenario_renders_valid_objects(helm_template, values: Path | None) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template(*([values] if values else []))
    validate_builtin(docs, f"{values} (Kubernetes {KUBERNETES_VERSION})")
    validate_keda(docs)
    kinds = {d["kind"] for d in docs}
    mode = "keda"
    if values and "hpa" in values.name:
        mode = "hpa"
    if values and "none" in values.name:
        mode = "none"
    assert ("ScaledObject" in kinds) == (mode == "keda")
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            _check_pod_security(doc["spec"]["template"]["spec"])
        if doc["kind"] == "Pod":
            _check_pod_security(doc["spec"])
        if doc["kind"] == "ServiceMonitor":
            assert doc["spec"]["endpoints"][0]["path"] == "/metrics"


def _check_pod_security(pod: dict) -> None:  # type: ignore[type-arg]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
        assert "limits" in c["resources"] and "requests" in c["resources"]
        # podman kube play (and any runtime) runs a command by path, not through $PATH.
        for command in (
            c.get("command"),
            c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command"),
        ):
            assert command is None or command[0].startswith("/"), (c["name"], command)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = c.get(probe, {}).get("exec", {}).get("command")
            assert command is None or command[0].startswith("/"), (c["name"], probe, command)


def test_two_models_get_a_decoder_and_scaler_each(helm_template) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template(CHART / "ci" / "two-models-values.yaml")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for model in ("ko", "ko-small"):
        assert ("Deployment", f"ksc-decoder-{model}") in names
        assert ("ScaledObject", f"ksc-decoder-{model}") in names
    streams = {
        t["metadata"]["stream"]
        for d in docs
        if d["kind"] == "ScaledObject"
        for t in d["spec"]["triggers"]
    }
    assert streams == {"ksc:sessions:ko", "ksc:sessions:ko-small"}


def test_grace_period_exceeds_drain_timeout(helm_template) -> None:  # type: ignore[no-untyped-def]
    for doc in helm_template():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        if doc["metadata"]["name"].endswith("-batch-worker"):
            # rq's warm shutdown has no drain timeout: a running job gets the grace period.
            assert pod["terminationGracePeriodSeconds"] >= 60
            continue
        assert pod["terminationGracePeriodSeconds"] > float(env["KSC_DRAIN_TIMEOUT"])


def test_image_tag_defaults_to_app_version(helm_template) -> None:  # type: ignore[no-untyped-def]
    images = {
        c["image"]
        for d in helm_template()
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {
        "ghcr.io/kaldi-stream-cluster/ksc-gateway:0.1.0",
        "ghcr.io/kaldi-stream-cluster/ksc-worker:0.1.0",
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("bad-autoscaling-mode.yaml", "autoscaling"),  # caught by values.schema.json
        ("zero-without-wait.yaml", "needs gateway.admissionWait > 0"),
        ("sentinel-without-addresses.yaml", "redis.mode=sentinel needs redis.sentinel.addresses"),
        ("hpa-zero.yaml", "replicas=0 needs autoscaling.mode=keda"),
        ("internal-without-auth.yaml", "runs in protected mode"),
        ("password-in-url.yaml", "redis.external.url carries a password"),
        ("tls-with-plain-url.yaml", "needs a TLS URL in redis.external.url (rediss://"),
        ("tls-internal.yaml", "redis.tls applies to an external Redis"),
        ("model-volume-elsewhere.yaml", "models[en].volume is mounted at /models/en"),
        ("username-with-at.yaml", "username"),  # caught by values.schema.json
    ],
)
def test_invalid_values_fail_with_a_message(values: str, message: str) -> None:
    apis = [arg for a in API_VERSIONS for arg in ("--api-versions", a)]
    proc = run(
        tool("helm"),
        "template",
        "ksc",
        str(CHART),
        "-f",
        str(INVALID / values),
        *apis,
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("sets", "missing"),
    [
        ([], "keda.sh/v1alpha1 ScaledObject"),
        (
            ["autoscaling.mode=hpa", "metrics.serviceMonitor.enabled=true"],
            "monitoring.coreos.com/v1 ServiceMonitor",
        ),
    ],
)
def test_a_missing_crd_stops_the_render_with_a_message(sets: list[str], missing: str) -> None:
    """Without KEDA (or the Prometheus Operator) in the cluster, `helm install` says so
    instead of failing on "no matches for kind"; `capabilityChecks=false` renders anyway
    (GitOps, `helm template` without a cluster)."""
    args = [arg for s in sets for arg in ("--set", s)]
    proc = run(tool("helm"), "template", "ksc", str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert "this cluster has no" in proc.stderr and missing in proc.stderr, proc.stderr
    unchecked = run(
        tool("helm"), "template", "ksc", str(CHART), *args, "--set", "capabilityChecks=false"
    )
    kind = missing.split()[-1]
    assert f"kind: {kind}" in unchecked.stdout


def test_values_accept_global(helm_template) -> None:  # type: ignore[no-untyped-def]
    """A parent chart passes `global` to its subcharts; the schema must let it in."""
    docs = helm_template(sets=("global.imageRegistry=registry.example.com",))
    assert any(d["kind"] == "Deployment" for d in docs)


def test_readme_parameter_table_is_current() -> None:
    proc = run(
        str(tool("python")), str(REPO / "scripts" / "helm-docs"), "--check", str(CHART), check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_the_gateway_answers_to_its_service_and_ingress_names(helm_template) -> None:  # type: ignore[no-untyped-def]
    """The gateway's Host check (DNS rebinding) must let through the names clients use:
    the Service's in-cluster names and the Ingress host; other names get 421."""
    from aiohttp.test_utils import make_mocked_request

    from gateway.origins import HostRule
    from shared.config import GatewaySettings

    docs = helm_template(CHART / "ci" / "keda-values.yaml")  # ingress on
    (ingress,) = [d for d in docs if d["kind"] == "Ingress"]
    (gateway,) = [
        d for d in docs if d["metadata"]["name"].endswith("-gateway") and d["kind"] == "Deployment"
    ]
    env = {
        e["name"]: e.get("value")
        for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    rule = HostRule.from_settings(
        GatewaySettings(allowed_hosts=env["KSC_ALLOWED_HOSTS"]), auth_on=False
    )
    service = gateway["metadata"]["name"]
    namespace = gateway["metadata"]["namespace"]
    good = [
        ingress["spec"]["rules"][0]["host"],
        service,
        f"{service}.{namespace}.svc.cluster.local",
    ]
    for host in [*good, "evil.example", "10.0.0.7"]:
        request = make_mocked_request("GET", "/", headers={"Host": f"{host}:8888"})
        assert rule.allows(request) == (host != "evil.example"), host
