"""What an operator configures through the chart, checked on the rendered objects.

Each scenario in ``helm/kaldi-stream-cluster/ci/`` is rendered by the real helm binary
(``conftest.helm_template``; schema validation by ``test_chart.py``); these tests assert
the concrete fields: Redis TLS and user names for the pods and KEDA alike, API keys from
a Secret, the NetworkPolicy, what the Ingress routes, timeouts that fit hour-long
sessions, the ``helm test`` pod and operators' own models.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.page import WEB_ROOT, load_assets
from shared.redis_client import parse_url
from tests.deploy.conftest import CHART, REPO

CI = CHART / "ci"
SECRET = "pa55word"  # what Kubernetes expands $(REDIS_PASSWORD) to, in these tests


def kind(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == name]


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod specs by workload name: Deployments, the StatefulSet, the test Pod."""
    out = {}
    for d in docs:
        if d["kind"] in {"Deployment", "StatefulSet"}:
            out[d["metadata"]["name"]] = d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            out[d["metadata"]["name"]] = d["spec"]
    return out


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def redis_clients(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The containers that talk to Redis (they carry KSC_REDIS_URL), by workload."""
    return {
        name: c
        for name, pod in pods(docs).items()
        for c in pod["containers"]
        if "KSC_REDIS_URL" in env_of(c)
    }


def target_of(container: dict[str, Any]):  # type: ignore[no-untyped-def]
    url = env_of(container)["KSC_REDIS_URL"].replace("$(REDIS_PASSWORD)", SECRET)
    return parse_url(url)


def triggers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for so in kind(docs, "ScaledObject") for t in so["spec"]["triggers"]]


def auth_params(docs: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    (ta,) = kind(docs, "TriggerAuthentication")
    return {r["parameter"]: (r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]}


# ---------------------------------------------------------------- Redis: TLS, users


def test_external_redis_over_tls_with_a_user_and_a_private_ca(helm_template) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template(CI / "external-tls-values.yaml")
    clients = redis_clients(docs)
    assert set(clients) == {"ksc-gateway", "ksc-decoder-ko", "ksc-batch-worker"}
    for name, container in clients.items():
        target = target_of(container)
        assert (target.kind, target.tls, target.db) == ("standalone", True, 3), name
        assert (target.username, target.password) == ("ksc", SECRET), name
        assert target.hosts == (("redis.data.svc.cluster.local", 6380),)
        assert target.ssl_ca_certs == "/etc/ksc/redis-tls/ca.crt"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/etc/ksc/redis-tls"]["readOnly"] is True
        volume = next(v for v in pods(docs)[name]["volumes"] if v["name"] == "redis-tls")
        assert volume["secret"]["secretName"] == "asr-redis-ca"
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    # KEDA: the same server, user, password and CA.
    for t in triggers(docs):
        meta = t["metadata"]
        assert meta["address"] == "redis.data.svc.cluster.local:6380"
        assert meta["databaseIndex"] == "3" and meta["enableTLS"] == "true"
        assert meta["usernameFromEnv"] == "REDIS_USERNAME"
    assert env_of(clients["ksc-decoder-ko"])["REDIS_USERNAME"] == "ksc"
    (so,) = kind(docs, "ScaledObject")
    assert so["spec"]["scaleTargetRef"]["envSourceContainerName"] == "worker"
    assert auth_params(docs) == {
        "password": ("asr-redis", "password"),
        "ca": ("asr-redis-ca", "ca.crt"),
    }


def test_sentinel_over_tls_with_users_of_its_own(helm_template) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template(CI / "sentinel-tls-values.yaml")
    for name, container in redis_clients(docs).items():
        target = target_of(container)
        assert (target.kind, target.tls, target.master, target.db) == (
            "sentinel",
            True,
            "mymaster",
            2,
        ), name
        assert (target.username, target.password) == ("ksc", SECRET)
        assert (target.sentinel_username, target.sentinel_password) == ("sentinel-reader", None)
        assert target.ssl_ca_certs == "/etc/ksc/redis-tls/ca.crt"
        assert env_of(container)["REDIS_SENTINEL_USERNAME"] == "sentinel-reader"
    for t in triggers(docs):
        assert t["type"] == "redis-sentinel-streams"
        meta = t["metadata"]
        assert meta["sentinelMaster"] == "mymaster" and meta["databaseIndex"] == "2"
        assert meta["enableTLS"] == "true"
        assert meta["usernameFromEnv"] == "REDIS_USERNAME"
        assert meta["sentinelUsernameFromEnv"] == "REDIS_SENTINEL_USERNAME"
    # usePassword: false -> the sentinels get no password, from KEDA either.
    assert set(auth_params(docs)) == {"password", "ca"}


def test_sentinel_shares_the_password_by_default(helm_template) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template(CI / "sentinel-values.yaml")
    for container in redis_clients(docs).values():
        target = target_of(container)
        assert target.sentinel_password == SECRET and target.username is None
    assert auth_params(docs) == {
        "password": ("asr-redis", "password"),
        "sentinelPassword": ("asr-redis", "password"),
    }


def test_cluster_over_tls_with_a_user(helm_template) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template(CI / "cluster-values.yaml")
    for container in redis_clients(docs).values():
        target = target_of(container)
        assert (target.kind, target.tls, target.username) == ("cluster", True, "ksc")
        assert target.ssl_ca_certs is None  # the system CAs
        assert "volumeMounts" in container
        assert all(m["name"] != "redis-tls" for m in container["volumeMounts"])
    for t in triggers(docs):
        assert t["type"] == "redis-cluster-streams"
        assert t["metadata"]["enableTLS"] == "true"
        assert t["metadata"]["addresses"].count(":6379") == 2
    assert set(auth_params(docs)) == {"password"}


def test_a_user_name_in_the_url_is_kept_whole(helm_template) -> None:  # type: ignore[no-untyped-def]
    """The chart used to put `:$(REDIS_PASSWORD)@` in front of the URL's own `user@`,
    which left `user@host` as the host and the user inside the password."""
    docs = helm_template(
        sets=(
            "redis.mode=standalone",
            "redis.external.url=redis://reader@redis.data.svc:6379/5",
            "redis.auth.existingSecret=asr-redis",
        )
    )
    for container in redis_clients(docs).values():
        target = target_of(container)
        assert (target.username, target.password) == ("reader", SECRET)
        assert target.hosts == (("redis.data.svc", 6379),) and target.db == 5
    for t in triggers(docs):
        assert t["metadata"]["address"] == "redis.data.svc:6379"


# ---------------------------------------------------------------- the internal Redis


def test_internal_redis_keeps_protected_mode_and_a_generated_password(helm_template) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template()
    (config,) = kind(docs, "ConfigMap")
    conf = config["data"]["redis.conf"]
    assert "protected-mode no" not in conf
    (secret,) = kind(docs, "Secret")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(secret["data"]["password"]) >= 40  # 32 random characters, base64
    (redis,) = kind(docs, "StatefulSet")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]


def test_network_policy_admits_this_release_and_keda_only(helm_template) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template()
    (policy,) = kind(docs, "NetworkPolicy")
    (redis,) = kind(docs, "StatefulSet")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    release, keda = rule["from"]
    assert release == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "kaldi-stream-cluster",
                "app.kubernetes.io/instance": "ksc",
            }
        }
    }
    assert keda == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "keda-operator"}},
    }
    # Every pod that talks to Redis matches the release peer.
    for d in docs:
        if d["kind"] == "Deployment":
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert release["podSelector"]["matchLabels"].items() <= labels.items()
    # Without KEDA, KEDA has no business with Redis; with an external Redis, no policy.
    (hpa,) = kind(helm_template(CI / "hpa-values.yaml"), "NetworkPolicy")
    assert len(hpa["spec"]["ingress"][0]["from"]) == 1
    assert not kind(helm_template(CI / "external-redis-values.yaml"), "NetworkPolicy")
    assert not kind(helm_template(sets=("networkPolicy.enabled=false",)), "NetworkPolicy")


# ---------------------------------------------------------------- the gateway


def test_gateway_api_keys_and_token_secret_from_secrets(helm_template) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template(CI / "external-tls-values.yaml")
    pod = pods(docs)["ksc-gateway"]
    container = pod["containers"][0]
    env = env_of(container)
    assert env["KSC_API_KEYS"] == "/etc/ksc/auth/api-keys"
    assert env["KSC_TOKEN_SECRET"] == {
        "secretKeyRef": {"name": "asr-tokens", "key": "token-secret"}
    }
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert mount == {"name": "api-keys", "mountPath": "/etc/ksc/auth", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"] == {
        "secretName": "asr-api-keys",
        "items": [{"key": "api-keys", "path": "api-keys"}],
    }
    default = env_of(pods(helm_template())["ksc-gateway"]["containers"][0])
    assert "KSC_API_KEYS" not in default and "KSC_TOKEN_SECRET" not in default


def _routed(paths: list[dict[str, str]], url_path: str) -> bool:
    """Kubernetes Ingress matching: Exact, or Prefix by whole path elements."""
    for p in paths:
        if p["pathType"] == "Exact" and url_path == p["path"]:
            return True
        if p["pathType"] == "Prefix":
            prefix = [e for e in p["path"].split("/") if e]
            parts = [e for e in url_path.split("/") if e]
            if parts[: len(prefix)] == prefix:
                return True
    return False


def test_ingress_routes_the_client_apis_and_the_page_but_not_metrics(helm_template) -> None:  # type: ignore[no-untyped-def]
    (ingress,) = kind(helm_template(CI / "keda-values.yaml"), "Ingress")
    paths = [
        {"path": p["path"], "pathType": p["pathType"]}
        for p in ingress["spec"]["rules"][0]["http"]["paths"]
    ]
    for inside in ("/metrics", "/status", "/healthz", "/readyz"):
        assert not _routed(paths, inside), inside
    served = [
        "/client/ws/speech",
        "/client/ws/status",
        "/client/dynamic/recognize",
        "/client/dynamic/reference",
        "/v1/transcriptions",
        "/v1/transcriptions/abc",
        "/vosk",
        *load_assets(WEB_ROOT),  # the browser page's files: every one is reachable
    ]
    for path in served:
        assert _routed(paths, path), path
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600


def test_timeouts_fit_hour_long_sessions(helm_template) -> None:  # type: ignore[no-untyped-def]
    """A rollout or scale-down drains a gateway's websockets; sessions last an hour."""
    gateway = pods(helm_template())["ksc-gateway"]
    drain = float(env_of(gateway["containers"][0])["KSC_DRAIN_TIMEOUT"])
    assert drain >= 3600
    assert gateway["terminationGracePeriodSeconds"] > drain


def test_the_gateway_knows_every_model_of_the_release(helm_template) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template(CI / "keda-zero-values.yaml")
    env = env_of(pods(docs)["ksc-gateway"]["containers"][0])
    assert env["KSC_MODELS"] == "ko,ko-fast" and env["KSC_MODEL"] == "ko"
    assert env["KSC_QUEUE_MESSAGES"] == "true" and float(env["KSC_ADMISSION_WAIT"]) > 0
    probe = pods(docs)["ksc-gateway"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/healthz"  # ready with zero decoders


# ---------------------------------------------------------------- helm test


def test_helm_test_transcribes_the_sample_through_the_service(helm_template) -> None:  # type: ignore[no-untyped-def]
    (pod,) = kind(helm_template(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] >= 60
    (container,) = spec["containers"]
    assert container["image"] == "ghcr.io/kaldi-stream-cluster/ksc-gateway:0.1.0"
    assert container["command"] == ["/opt/venv/bin/ksc"]
    sample = container["args"][-1]
    assert container["args"] == ["transcribe", "--url", "ws://ksc-gateway.ksc.svc:8888", sample]
    # The sample is package data of `shared`, installed in the image's venv; the venv's
    # Python is the one of the image's pinned base.
    assert sample.endswith("/site-packages/shared/samples/ko-sample.wav")
    assert (REPO / "shared" / "samples" / "ko-sample.wav").is_file()
    base = re.search(
        r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)\.",
        (REPO / "docker" / "gateway.Dockerfile").read_text(),
        re.M,
    )
    assert base and f"/lib/python{base[1]}/" in sample


def test_helm_test_authenticates_when_the_gateway_wants_keys(helm_template) -> None:  # type: ignore[no-untyped-def]
    (pod,) = kind(helm_template(CI / "external-tls-values.yaml"), "Pod")
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["/opt/venv/bin/python", "-c"]
    script = container["args"][0]
    assert 'token=os.environ["KSC_API_KEY"]' in script and "sys.exit(1 if" in script
    env = env_of(container)
    assert env["KSC_API_KEY"] == {"secretKeyRef": {"name": "asr-test-key", "key": "api-key"}}
    compile(script, "helm-test", "exec")


# ---------------------------------------------------------------- operators' own models


def test_an_own_model_from_a_volume_prepared_by_an_init_container(helm_template) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template(CI / "own-model-values.yaml")
    pod = pods(docs)["ksc-decoder-en"]
    (init,) = pod["initContainers"]
    assert init["image"] == "ghcr.io/kaldi-stream-cluster/ksc-model-prep:0.1.0"
    source = "/models/en/vosk-model-small-en-us-0.15"
    assert init["command"] == ["/opt/venv/bin/ksc"]
    assert init["args"] == ["model", "prepare", "--from", source, "--cache", "/var/cache/ksc"]
    worker = pod["containers"][0]
    env = env_of(worker)
    assert env["KSC_MODEL"] == source and env["KSC_CACHE"] == "/var/cache/ksc"
    for container in (init, worker):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/models/en"]["readOnly"] is True
        assert mounts["/var/cache/ksc"]["name"] == "cache"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {
        "claimName": "asr-models",
        "readOnly": True,
    }
    assert volumes["cache"] == {"name": "cache", "emptyDir": {}}
    # The built-in model needs neither.
    builtin = pods(docs)["ksc-decoder-ko"]
    assert "initContainers" not in builtin
    assert env_of(builtin["containers"][0])["KSC_CACHE"] == "/opt/ksc/cache"


def test_the_model_prep_image_is_a_stage_of_the_worker_dockerfile() -> None:
    text = (REPO / "docker" / "worker.Dockerfile").read_text()
    stage = text.split("AS model-prep\n", 1)[1].split("\nFROM ", 1)[0]
    assert "libfst-tools libfst22-plugins-base" in stage and "purge" not in stage
    assert re.search(r"^USER 10001:10001$", stage, re.M)
    runtime = text.split("\nFROM ")[-1]
    assert "apt-get purge -y --auto-remove libfst-tools" in runtime


@pytest.mark.parametrize("name", ["docs/deploy.md"])
def test_uninstall_leftovers_are_documented(helm_template, name: str) -> None:  # type: ignore[no-untyped-def]
    """`helm uninstall` keeps the password Secret (resource-policy: keep) and the Redis
    claim (a StatefulSet's claims outlive it); the guide says how to remove both."""
    docs = helm_template()
    (redis,) = kind(docs, "StatefulSet")
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    leftover_claim = f"{claim['metadata']['name']}-{redis['metadata']['name']}-0"
    (secret,) = kind(docs, "Secret")
    text = Path(REPO / name).read_text(encoding="utf-8")
    section = text[text.index("## Uninstall") :]
    assert leftover_claim in section and secret["metadata"]["name"] in section
