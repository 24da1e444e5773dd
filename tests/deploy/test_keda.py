"""KEDA objects: CRD validation, trigger metadata keys, and the scaling rule on real Redis."""

from __future__ import annotations

import ast
import math
from typing import Any

import pytest

from gateway.queues import QueueKeeper, admitted_models
from shared import cluster
from shared.config import GatewaySettings
from shared.keys import GROUP, Keys
from tests.deploy.conftest import CHART, validate_keda

# Metadata keys KEDA's redis-streams scalers read (keda.sh docs, redis_streams_scaler.go).
_CONNECTION = {"usernameFromEnv", "passwordFromEnv", "enableTLS", "unsafeSsl", "databaseIndex"}
ALLOWED = {
    "redis-streams": _CONNECTION
    | {
        "address",
        "addressFromEnv",
        "host",
        "hostFromEnv",
        "port",
        "portFromEnv",
        "stream",
        "consumerGroup",
        "pendingEntriesCount",
        "streamLength",
        "lagCount",
        "activationLagCount",
    },
    "redis-sentinel-streams": _CONNECTION
    | {
        "addresses",
        "addressesFromEnv",
        "hosts",
        "ports",
        "sentinelUsernameFromEnv",
        "sentinelPasswordFromEnv",
        "sentinelMaster",
        "sentinelMasterFromEnv",
        "stream",
        "consumerGroup",
        "pendingEntriesCount",
        "streamLength",
        "lagCount",
        "activationLagCount",
    },
    "redis-cluster-streams": _CONNECTION
    | {
        "addresses",
        "addressesFromEnv",
        "hosts",
        "ports",
        "stream",
        "consumerGroup",
        "pendingEntriesCount",
        "streamLength",
        "lagCount",
        "activationLagCount",
    },
}
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))


def scaled_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "ScaledObject"]


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda v: v.stem if v else "default")
def test_trigger_metadata_keys_are_known(helm_template, values) -> None:  # type: ignore[no-untyped-def]
    docs = helm_template(*([values] if values else []))
    for so in scaled_objects(docs):
        for trigger in so["spec"]["triggers"]:
            unknown = set(trigger["metadata"]) - ALLOWED[trigger["type"]]
            assert not unknown, f"{so['metadata']['name']}: unknown metadata {unknown}"
            assert all(isinstance(v, str) for v in trigger["metadata"].values())
            assert trigger["metadata"]["consumerGroup"] == "decoders"
        names = {t["name"] for t in so["spec"]["triggers"]}
        formula = so["spec"]["advanced"]["scalingModifiers"]["formula"]
        assert _names_in(formula) <= names


def test_keda_validator_rejects_a_broken_scaled_object(helm_template) -> None:  # type: ignore[no-untyped-def]
    (so,) = scaled_objects(helm_template())
    broken = {**so, "spec": {**so["spec"], "minReplicaCount": "one"}}
    with pytest.raises(AssertionError, match="minReplicaCount"):
        validate_keda([broken])


def _names_in(formula: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(formula, mode="eval")) if isinstance(n, ast.Name)}


def _evaluate(formula: str, values: dict[str, int]) -> float:
    """KEDA's formula language (expr) restricted to names, numbers, + - * /."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp):
            ops = {
                ast.Add: float.__add__,
                ast.Sub: float.__sub__,
                ast.Mult: float.__mul__,
                ast.Div: float.__truediv__,
            }
            return ops[type(node.op)](float(ev(node.left)), float(ev(node.right)))
        raise AssertionError(f"unsupported formula element {ast.dump(node)}")

    return ev(ast.parse(formula, mode="eval"))


async def keda_lag(redis, stream: str, group: str) -> int:  # type: ignore[no-untyped-def]
    """redis_streams_scaler.go, lag mode: XINFO GROUPS lag; no stream 0; no group XLEN."""
    if not await redis.exists(stream):
        return 0
    for info in await redis.xinfo_groups(stream):
        if info["name"].decode() == group:
            return int(info["lag"])
    return int(await redis.xlen(stream))


async def keda_pending(redis, stream: str, group: str) -> int:  # type: ignore[no-untyped-def]
    """redis_streams_scaler.go, pending mode: XPENDING's count."""
    return int((await redis.xpending(stream, group))["pending"])


def keda_replicas(so: dict[str, Any], metrics: dict[str, int], current: int) -> int:
    """What KEDA + the HPA make of the metrics (AverageValue target, HPA tolerance 10%)."""
    spec = so["spec"]
    mod = spec["advanced"]["scalingModifiers"]
    value = _evaluate(mod["formula"], metrics)
    lo, hi = spec["minReplicaCount"], spec["maxReplicaCount"]
    if value <= float(mod["activationTarget"]):
        return lo  # not active: KEDA scales to minReplicaCount (zero if that is 0)
    if current == 0:
        current = 1  # KEDA activates to one replica, then the HPA takes over
    ratio = value / (float(mod["target"]) * current)
    desired = current if abs(ratio - 1.0) <= 0.1 else math.ceil(value / float(mod["target"]))
    return max(max(lo, 1), min(hi, desired))


def documented_rule(waiting: int, decoding: int, per_pod: int, lo: int, hi: int) -> int:
    """The rule in the chart README and docs/deploy.md."""
    if waiting + decoding <= 0:
        return lo
    return max(max(lo, 1), min(hi, math.ceil((waiting + decoding) / per_pod)))


@pytest.mark.parametrize(
    ("values", "waiting", "decoding"),
    [
        (None, 0, 0),
        (None, 0, 4),
        (None, 5, 12),
        (None, 40, 8),
        ("keda-zero-values.yaml", 0, 0),
        ("keda-zero-values.yaml", 1, 0),
        ("keda-zero-values.yaml", 7, 3),
    ],
)
async def test_scaling_from_live_redis_matches_the_documented_rule(
    redis,
    helm_template,
    values,
    waiting: int,
    decoding: int,  # type: ignore[no-untyped-def]
) -> None:
    so = scaled_objects(helm_template(*([CHART / "ci" / values] if values else [])))[0]
    triggers = {t["name"]: t["metadata"] for t in so["spec"]["triggers"]}
    stream, group = triggers["waiting"]["stream"], triggers["waiting"]["consumerGroup"]
    assert "lagCount" in triggers["waiting"] and "pendingEntriesCount" in triggers["decoding"]

    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    for i in range(waiting + decoding):
        await redis.xadd(stream, {"sid": f"s{i}", "model": "ko", "created": "0"})
    if decoding:  # workers with free slots read (claim) the oldest entries
        await redis.xreadgroup(group, "worker-a", {stream: ">"}, count=decoding)

    metrics = {
        "waiting": await keda_lag(redis, stream, group),
        "decoding": await keda_pending(redis, stream, group),
    }
    assert metrics == {"waiting": waiting, "decoding": decoding}
    per_pod = int(so["spec"]["advanced"]["scalingModifiers"]["target"])
    lo, hi = so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]
    expected = documented_rule(waiting, decoding, per_pod, lo, hi)
    assert keda_replicas(so, metrics, current=0) == expected
    if waiting + decoding == 0:
        assert expected == lo


async def test_lag_of_a_missing_group_is_the_stream_length(redis) -> None:  # type: ignore[no-untyped-def]
    await redis.xadd("ksc:sessions:ko", {"sid": "a"})
    await redis.xadd("ksc:sessions:ko", {"sid": "b"})
    assert await keda_lag(redis, "ksc:sessions:ko", "decoders") == 2
    assert await keda_lag(redis, "ksc:sessions:none", "decoders") == 0


async def test_a_wrong_lag_cannot_fool_the_trigger_for_long(redis, helm_template) -> None:  # type: ignore[no-untyped-def]
    """Issue 12: after AOF reloads XINFO said lag 88 while nothing waited. KEDA reads
    that lag; the gateway recounts the queue (on every admission and every few seconds,
    ``cluster.queued``) and sets the group's counter right, so KEDA reads the truth."""
    (so,) = scaled_objects(helm_template())
    trigger = {t["name"]: t["metadata"] for t in so["spec"]["triggers"]}["waiting"]
    stream, group = trigger["stream"], trigger["consumerGroup"]
    keys = Keys("ksc")
    assert stream == keys.sessions("ko") and group == GROUP
    await cluster.ensure_queue(redis, keys, "ko")
    for i in range(6):
        await redis.xadd(stream, {"sid": f"s{i}", "model": "ko", "created": "0"})
    await redis.xreadgroup(group, "worker-a", {stream: ">"}, count=4)  # 4 decoding, 2 waiting
    (info,) = await redis.xinfo_groups(stream)
    last = info["last-delivered-id"]
    await redis.execute_command("XGROUP", "SETID", stream, group, last, "ENTRIESREAD", 0)
    assert await keda_lag(redis, stream, group) == 6, "fooled, as Redis's estimate can be"
    assert await cluster.queued(redis, keys, "ko") == 2
    assert await keda_lag(redis, stream, group) == 2
    metrics = {"waiting": 2, "decoding": await keda_pending(redis, stream, group)}
    per_pod = int(so["spec"]["advanced"]["scalingModifiers"]["target"])
    lo, hi = so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]
    assert keda_replicas(so, metrics, current=1) == documented_rule(2, 4, per_pod, lo, hi)


def _gateway_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (gateway,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway")
    ]
    env = gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env if "value" in e}


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda v: v.stem if v else "default")
def test_activation_settings_every_keda_from_2_12_accepts(helm_template, values) -> None:  # type: ignore[no-untyped-def]
    """KEDA up to 2.15 requires ``activationLagCount`` next to ``lagCount``; 2.16.0 and
    2.16.1 also refuse "0" ("activationLagCount required for Redis lag", kedacore/keda
    #6478, fixed by #6481). Activation is decided by ``scalingModifiers.activationTarget``
    on the composite value, so the triggers' own value changes nothing: it is "1"."""
    for so in scaled_objects(helm_template(*([values] if values else []))):
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            if "lagCount" in meta:
                assert int(meta["activationLagCount"]) != 0, so["metadata"]["name"]
            else:
                assert "activationLagCount" not in meta
        mod = so["spec"]["advanced"]["scalingModifiers"]
        assert float(mod["activationTarget"]) >= 0 and mod["metricType"] == "AverageValue"


def test_fallback_and_initial_cooldown(helm_template) -> None:  # type: ignore[no-untyped-def]
    """Redis unreadable for KEDA: decoders go to the fallback count (from zero too),
    never below the model's `replicas`; a new ScaledObject waits before scaling to zero."""
    (default,) = scaled_objects(helm_template())
    assert default["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 1}
    assert default["spec"]["initialCooldownPeriod"] == 300
    zero = scaled_objects(helm_template(CHART / "ci" / "keda-zero-values.yaml"))
    assert [so["spec"]["minReplicaCount"] for so in zero] == [0, 0]
    assert [so["spec"]["fallback"]["replicas"] for so in zero] == [2, 2]
    assert {so["spec"]["initialCooldownPeriod"] for so in zero} == {600}
    off = scaled_objects(
        helm_template(
            sets=(
                "autoscaling.keda.fallback.replicas=0",
                "autoscaling.keda.initialCooldownPeriod=0",
            )
        )
    )
    assert "fallback" not in off[0]["spec"] and "initialCooldownPeriod" not in off[0]["spec"]


@pytest.mark.parametrize(
    "values", ["keda-zero-values.yaml", "two-models-values.yaml", "own-model-values.yaml"]
)
async def test_the_gateway_keeps_a_group_for_every_scaled_model(
    redis,
    helm_template,
    values: str,  # type: ignore[no-untyped-def]
) -> None:
    """Redis lost its data and no decoder runs: the gateways (configured by the chart)
    create every model's stream and group, so KEDA's lag trigger reads 0 (then the real
    lag), never fails with NOGROUP, and a session for any model can start a decoder."""
    docs = helm_template(CHART / "ci" / values)
    env = _gateway_env(docs)
    settings = GatewaySettings(model=env["KSC_MODEL"], models=env["KSC_MODELS"])
    streams = {
        t["metadata"]["stream"] for so in scaled_objects(docs) for t in so["spec"]["triggers"]
    }
    keys = Keys(env["KSC_PREFIX"])
    models = admitted_models(settings.model, settings.models)
    assert {keys.sessions(m) for m in models} == streams
    for stream in streams:
        assert not await redis.exists(stream)
    await QueueKeeper(redis, keys, models).keep_once()
    for stream in streams:
        (group,) = await redis.xinfo_groups(stream)
        assert group["name"].decode() == GROUP
        assert await keda_lag(redis, stream, GROUP) == 0
