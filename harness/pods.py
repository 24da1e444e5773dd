"""The chart's pods on one machine, started with podman the way a kubelet starts them.

There is no Kubernetes API server here, so this module does the kubelet's part for the
objects ``helm template`` renders: each container of a Deployment's or StatefulSet's pod
template becomes one ``podman run`` with the same image, command and args; the same
environment (values, Secret keys, the pod's name and namespace, ``$(VAR)`` expansion, the
Service variables Kubernetes adds); the same securityContext (user and groups, read-only
root filesystem, dropped capabilities, no privilege escalation, seccomp); the same
volumes (emptyDir, ConfigMap, Secret and claim templates as host directories) and the
same CPU and memory limits. Probes run as the kubelet runs them (a command inside the
container, an HTTP GET or a TCP connect, each within its ``timeoutSeconds``) and a pod
stops as the kubelet stops it: preStop hook, SIGTERM, SIGKILL once
``terminationGracePeriodSeconds`` have passed.

Every pod shares the host's network (this machine has no bridge networks): a Service's
names resolve to 127.0.0.1 in every container, and because all pods share one port
space, port numbers are moved to free ones (:func:`remap_ports`) — the one liberty taken
with the rendered objects, standing in for a pod IP of each pod's own.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from redis import Redis
from redis.exceptions import RedisError

from harness.env import REPO
from shared.keys import Keys

__all__ = [
    "CPU_OF",
    "PODMAN",
    "Manifests",
    "Node",
    "Pod",
    "PodError",
    "free_ports",
    "heartbeat",
    "helm_template",
    "podman_missing",
    "remap_ports",
    "remove_orphans",
]

#: podman with the repository's settings (docker/local/containers.conf).
PODMAN = [str(REPO / "scripts" / "podman")]
#: The chart, and the values it is rendered with for a run on this machine.
CHART = REPO / "helm" / "kaldi-stream-cluster"
VALUES = REPO / "deploy" / "podman" / "values.yaml"
#: Every container started here carries this label (the value: the node's run id) and
#: ``LABEL.owner`` (the pid of the process that started it), for clean-up.
LABEL = "io.kaldi-stream-cluster.pods"
#: Characters of the random suffix in a Deployment's pod names, as Kubernetes picks them.
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

Doc = dict[str, Any]
#: Run inside a container by :meth:`Pod.cpu`: the exit code and the children's CPU time.
CPU_OF = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(code, r.ru_utime + r.ru_stime)\n"
)


class PodError(Exception):
    """A pod could not be started as rendered, or did not behave (the message says how,
    with the end of its log)."""


def helm_template(
    chart: Path,
    values: Sequence[Path] = (),
    set_values: Mapping[str, str] | None = None,
    *,
    release: str = "ksc",
    namespace: str = "ksc",
) -> list[Doc]:
    """``helm template`` with the helm binary beside this interpreter (scripts/deploy-tools)."""
    helm = Path(sys.executable).parent / "helm"
    if not helm.exists():
        raise PodError(f"{helm} is missing: run `scripts/deploy-tools .venv` (make setup)")
    argv = [str(helm), "template", release, str(chart), "-n", namespace]
    for path in values:
        argv += ["-f", str(path)]
    for key, value in (set_values or {}).items():
        argv += ["--set-string", f"{key}={value}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise PodError(f"helm template failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def remap_ports(obj: Any, ports: Mapping[int, int]) -> Any:
    """A copy of ``obj`` with each port number in ``ports`` replaced: integers equal to
    one, and whole numbers inside strings (``host:6379``, ``-p 6379``, ``port 6379`` in a
    ConfigMap's file). Secrets are never passed here."""
    if not ports:
        return copy.deepcopy(obj)
    pattern = re.compile(r"(?<![\w.])(" + "|".join(str(p) for p in ports) + r")(?![\w.])")

    def walk(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return ports.get(value, value)
        if isinstance(value, str):
            return pattern.sub(lambda m: str(ports[int(m[1])]), value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return walk(obj)


@dataclass
class Manifests:
    """Rendered objects, looked up the way the kubelet resolves a pod's references."""

    docs: list[Doc]
    namespace: str = "ksc"

    def find(self, kind: str, name: str) -> Doc:
        for doc in self.docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        raise PodError(f"no {kind} {name} in the rendered manifests")

    def workload(self, name: str) -> Doc:
        for kind in ("Deployment", "StatefulSet"):
            with suppress(PodError):
                return self.find(kind, name)
        raise PodError(f"no Deployment or StatefulSet {name} in the rendered manifests")

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def secret(self, name: str, key: str) -> str:
        doc = self.find("Secret", name)
        if key in doc.get("stringData", {}):
            return str(doc["stringData"][key])
        return base64.b64decode(doc["data"][key]).decode()

    def configmap(self, name: str) -> dict[str, str]:
        return {k: str(v) for k, v in self.find("ConfigMap", name).get("data", {}).items()}


def _quantity(text: str | int | float) -> float:
    """A Kubernetes quantity: ``500m`` -> 0.5, ``3Gi`` -> 3 * 2**30, ``2`` -> 2."""
    value = str(text)
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    decimal = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    for suffix, factor in binary.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    if value[-1:] in decimal:
        return float(value[:-1]) * decimal[value[-1]]
    return float(value)


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)``: a defined variable's value, ``$$`` an escaped ``$``,
    anything else left as written."""

    def one(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        return env.get(m[1], m[0])

    return _VAR.sub(one, text)


def _service_env(services: Sequence[Doc]) -> dict[str, str]:
    """The variables Kubernetes gives every container for each Service of its namespace
    (``enableServiceLinks``, on by default), with 127.0.0.1 as every cluster IP."""
    env: dict[str, str] = {}
    for svc in services:
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        ports = svc["spec"].get("ports", [])
        if not ports:
            continue
        env[f"{prefix}_SERVICE_HOST"] = "127.0.0.1"
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            proto = port.get("protocol", "TCP")
            number = port["port"]
            if "name" in port:
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number)
            base = f"{prefix}_PORT_{number}_{proto}"
            env[base] = f"{proto.lower()}://127.0.0.1:{number}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(number)
            env[f"{base}_ADDR"] = "127.0.0.1"
        first = ports[0]
        env[f"{prefix}_PORT"] = (
            f"{first.get('protocol', 'TCP').lower()}://127.0.0.1:{first['port']}"
        )
    return env


def _podman(
    *args: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise PodError(f"podman {' '.join(args[:3])} … failed ({proc.returncode}): {proc.stderr}")
    return proc


@dataclass
class Pod:
    """One running pod of the chart: its one container, started by :class:`Node`."""

    name: str
    container: str
    spec: Doc
    main: Doc
    started: float = field(default_factory=time.monotonic)
    #: when :meth:`terminate` sent SIGTERM (time.monotonic())
    signalled: float | None = None

    # -- what the kubelet does -------------------------------------------------------------

    def probe(self, kind: str) -> bool:
        """One attempt of the container's ``kind`` probe (``startupProbe``,
        ``readinessProbe``, ``livenessProbe``); a container without one passes."""
        spec = self.main.get(kind)
        if not spec:
            return True
        timeout = float(spec.get("timeoutSeconds", 1))
        if "exec" in spec:
            try:
                return self.exec(*spec["exec"]["command"], timeout=timeout).returncode == 0
            except subprocess.TimeoutExpired:
                return False
        if "httpGet" in spec:
            get = spec["httpGet"]
            url = f"http://127.0.0.1:{self.port(get['port'])}{get.get('path', '/')}"
            request = urllib.request.Request(
                url, headers={h["name"]: h["value"] for h in get.get("httpHeaders", [])}
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    status = int(resp.status)
                return 200 <= status < 400
            except (OSError, urllib.error.HTTPError):
                return False
        if "tcpSocket" in spec:
            try:
                socket.create_connection(
                    ("127.0.0.1", self.port(spec["tcpSocket"]["port"])), timeout=timeout
                ).close()
                return True
            except OSError:
                return False
        raise PodError(f"{self.name}: unsupported probe {spec}")

    def wait_ready(
        self, limit: float, interval: float = 0.5, hint: Callable[[], bool] | None = None
    ) -> float:
        """Until the startup probe and then the readiness probe pass (PodError after
        ``limit`` s or if the container exits); the seconds since the container started.
        Probes run every ``interval`` s rather than every ``periodSeconds``, so the time
        is the pod's own, not the kubelet's probe period. ``hint``, a cheap check of what
        the probe checks, holds the probes back until it passes: an exec probe costs a
        Python start each time, which a pod loading its model would pay for."""
        deadline = time.monotonic() + limit
        while hint is not None and not hint():
            if not self.running():
                raise PodError(f"{self.name} exited before it was ready:\n{self.logs(40)}")
            if time.monotonic() > deadline:
                raise PodError(f"{self.name} not ready in {limit:g} s:\n{self.logs(40)}")
            time.sleep(0.1)
        for kind in ("startupProbe", "readinessProbe"):
            delay = float(self.main.get(kind, {}).get("initialDelaySeconds", 0))
            while time.monotonic() < self.started + delay:
                time.sleep(0.05)
            while not self.probe(kind):
                if not self.running():
                    raise PodError(f"{self.name} exited before it was ready:\n{self.logs(40)}")
                if time.monotonic() > deadline:
                    raise PodError(f"{self.name} not ready in {limit:g} s:\n{self.logs(40)}")
                time.sleep(interval)
        return time.monotonic() - self.started

    def terminate(self) -> int:
        """Stop the pod as the kubelet deletes it: preStop, SIGTERM, and SIGKILL once the
        grace period (preStop included) is over. Returns the container's exit code."""
        grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        deadline = time.monotonic() + grace
        hook = self.main.get("lifecycle", {}).get("preStop", {})
        if "exec" in hook and self.running():
            with suppress(subprocess.TimeoutExpired):
                self.exec(*hook["exec"]["command"], timeout=grace)
        if self.running():
            self.kill("TERM")
            self.signalled = time.monotonic()
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.running():
            self.kill("KILL")
        return self.wait_exit(30)

    def restart(self) -> None:
        """The kubelet's restart of a dead container (restartPolicy Always), in place."""
        started = time.monotonic()
        _podman("start", self.container)
        self.started = started

    # -- tools -----------------------------------------------------------------------------

    def exec(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``command`` inside the container (its user, its environment)."""
        return subprocess.run(
            [*PODMAN, "exec", self.container, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cpu(self, *command: str, timeout: float = 60) -> tuple[int, float]:
        """Run ``command`` in the container: its exit code and the CPU seconds (user +
        system) it and its children took, measured inside the container."""
        out = self.exec("python", "-c", CPU_OF, *command, timeout=timeout)
        code, seconds = out.stdout.split()
        return int(code), float(seconds)

    def kill(self, sig: str = "KILL") -> None:
        _podman("kill", "--signal", sig, self.container, check=False)

    def state(self) -> Doc:
        out = _podman("inspect", "--format", "{{json .State}}", self.container).stdout
        state: Doc = json.loads(out)
        return state

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def wait_exit(self, limit: float) -> int:
        deadline = time.monotonic() + limit
        while self.running():
            if time.monotonic() > deadline:
                raise PodError(f"{self.name} still running after {limit:g} s")
            time.sleep(0.1)
        return int(self.state()["ExitCode"])

    def logs(self, tail: int | None = None) -> str:
        args = ["logs", *(["--tail", str(tail)] if tail else []), self.container]
        proc = _podman(*args, check=False)
        return proc.stdout + proc.stderr

    @property
    def image(self) -> str:
        return str(self.main["image"])

    def port(self, port: int | str) -> int:
        """A probe's port: a number, or the name of one of the container's ports."""
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in self.main.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise PodError(f"{self.name}: no port named {port}")

    def env(self) -> dict[str, str]:
        """The environment the container runs with (image's and pod's)."""
        out = _podman("inspect", "--format", "{{json .Config.Env}}", self.container).stdout
        return dict(item.split("=", 1) for item in json.loads(out))


class Node:
    """Starts pods of the rendered ``manifests`` with podman; :meth:`close` removes every
    container it started. ``ports`` moves the chart's port numbers for every object."""

    def __init__(self, manifests: Manifests, workdir: Path, ports: Mapping[int, int]) -> None:
        self.run_id = secrets.token_hex(4)
        self.namespace = manifests.namespace
        self.ports = dict(ports)
        self.manifests = Manifests(
            [d if d["kind"] == "Secret" else remap_ports(d, ports) for d in manifests.docs],
            manifests.namespace,
        )
        self.workdir = workdir
        self.pods: list[Pod] = []
        remove_orphans()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, workload: str, ports: Mapping[int, int] | None = None, ordinal: int = 0) -> Pod:
        """Start a pod of the Deployment or StatefulSet ``workload``; ``ports`` moves
        more port numbers for this pod only (a second replica beside the first)."""
        obj = self.manifests.workload(workload)
        obj = remap_ports(obj, ports or {})
        template = obj["spec"]["template"]
        spec: Doc = template["spec"]
        if obj["kind"] == "StatefulSet":
            name = f"{workload}-{ordinal}"
        else:
            tmpl_hash = "".join(secrets.choice(_NAME_ALPHABET) for _ in range(10))
            name = f"{workload}-{tmpl_hash}-" + "".join(
                secrets.choice(_NAME_ALPHABET) for _ in range(5)
            )
        if len(spec["containers"]) != 1 or spec.get("initContainers"):
            raise PodError(f"{workload}: only pods of one container are supported")
        main = spec["containers"][0]
        container = f"ksc-{self.run_id}-{name}"
        argv = self._argv(obj, spec, main, name, container)
        started = time.monotonic()
        _podman(*argv, timeout=120)
        pod = Pod(name, container, spec, main, started)
        self.pods.append(pod)
        return pod

    def close(self) -> None:
        """Remove every container this node started (running or not)."""
        names = [p.container for p in self.pods]
        if names:
            _podman("rm", "--force", "--time", "0", *names, timeout=120, check=False)
        self.pods.clear()

    # -- the translation -------------------------------------------------------------------

    def _argv(self, obj: Doc, spec: Doc, main: Doc, name: str, container: str) -> list[str]:
        argv = [
            "run",
            "--detach",
            "--name",
            container,
            "--hostname",
            name,
            "--network",
            "host",
            "--label",
            f"{LABEL}={self.run_id}",
            "--label",
            f"{LABEL}.owner={os.getpid()}",
            "--label",
            f"{LABEL}.pod={name}",
            # Kubernetes ignores an image's HEALTHCHECK; its probes are run from here.
            "--no-healthcheck",
            "--pull",
            {"Always": "always", "Never": "never"}.get(
                main.get("imagePullPolicy", "IfNotPresent"), "missing"
            ),
        ]
        for svc in self.manifests.of_kind("Service"):
            svc_name = svc["metadata"]["name"]
            for host in (
                svc_name,
                f"{svc_name}.{self.namespace}",
                f"{svc_name}.{self.namespace}.svc",
                f"{svc_name}.{self.namespace}.svc.cluster.local",
            ):
                argv += ["--add-host", f"{host}:127.0.0.1"]
        argv += self._security(spec, main)
        argv += self._resources(main.get("resources", {}))
        env = self._env(main, name)
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        argv += self._volumes(obj, spec, main, name)
        if "workingDir" in main:
            argv += ["--workdir", main["workingDir"]]
        if "command" in main:
            argv += ["--entrypoint", json.dumps([_expand(c, env) for c in main["command"]])]
        argv.append(main["image"])
        argv += [_expand(a, env) for a in main.get("args", [])]
        return argv

    def _security(self, spec: Doc, main: Doc) -> list[str]:
        pod: Doc = spec.get("securityContext", {})
        ctr: Doc = main.get("securityContext", {})

        def pick(key: str) -> Any:
            return ctr.get(key, pod.get(key))

        argv: list[str] = []
        uid, gid = pick("runAsUser"), pick("runAsGroup")
        if uid is None:
            image_user = _podman(
                "image", "inspect", "--format", "{{.Config.User}}", main["image"]
            ).stdout.strip()
            uid = image_user.split(":")[0] if image_user else "0"
        if pick("runAsNonRoot") and (not str(uid).isdigit() or int(uid) == 0):
            raise PodError(f"{main['name']}: runAsNonRoot, but the user is {uid!r}")
        argv += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        for group in [pod.get("fsGroup"), *pod.get("supplementalGroups", [])]:
            if group is not None:
                argv += ["--group-add", str(group)]
        if ctr.get("readOnlyRootFilesystem"):
            # podman would otherwise mount tmpfs on /tmp, /run and /var/tmp: not the chart.
            argv += ["--read-only", "--read-only-tmpfs=false"]
        if ctr.get("privileged"):
            argv.append("--privileged")
        if ctr.get("allowPrivilegeEscalation") is False:
            argv += ["--security-opt", "no-new-privileges"]
        caps = ctr.get("capabilities", {})
        for cap in caps.get("drop", []):
            argv += ["--cap-drop", cap.lower()]
        for cap in caps.get("add", []):
            argv += ["--cap-add", cap.lower()]
        seccomp = pick("seccompProfile") or {}
        if seccomp.get("type") == "Unconfined":
            argv += ["--security-opt", "seccomp=unconfined"]
        elif seccomp.get("type") not in (None, "RuntimeDefault"):
            raise PodError(f"seccomp profile {seccomp} is not supported here")
        return argv

    @staticmethod
    def _resources(resources: Doc) -> list[str]:
        argv: list[str] = []
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        if "cpu" in limits:
            argv += ["--cpus", f"{_quantity(limits['cpu']):g}"]
        if "memory" in limits:
            argv += ["--memory", str(int(_quantity(limits["memory"])))]
        if "cpu" in requests:
            argv += ["--cpu-shares", str(max(2, int(_quantity(requests["cpu"]) * 1024)))]
        return argv

    def _env(self, main: Doc, pod_name: str) -> dict[str, str]:
        """The container's variables in the kubelet's order: the Services' first, then
        the container's own, each expanded against those defined before it."""
        env = {"HOSTNAME": pod_name, **_service_env(self.manifests.of_kind("Service"))}
        for item in main.get("envFrom", []):
            if "configMapRef" in item:
                env.update(self.manifests.configmap(item["configMapRef"]["name"]))
            elif "secretRef" in item:
                doc = self.manifests.find("Secret", item["secretRef"]["name"])
                env.update(
                    {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
                )
        for var in main.get("env", []):
            if "value" in var:
                env[var["name"]] = _expand(str(var["value"]), env)
                continue
            source = var.get("valueFrom", {})
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[var["name"]] = self.manifests.secret(ref["name"], ref["key"])
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                env[var["name"]] = self.manifests.configmap(ref["name"])[ref["key"]]
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                fields = {
                    "metadata.name": pod_name,
                    "metadata.namespace": self.namespace,
                    "status.podIP": "127.0.0.1",
                    "status.hostIP": "127.0.0.1",
                    "spec.nodeName": socket.gethostname(),
                }
                if path not in fields:
                    raise PodError(f"fieldRef {path} is not supported here")
                env[var["name"]] = fields[path]
            else:
                raise PodError(f"env {var['name']}: unsupported source {source}")
        return env

    def _volumes(self, obj: Doc, spec: Doc, main: Doc, pod_name: str) -> list[str]:
        """Each volume a host directory under the node's workdir, as the kubelet keeps
        them under /var/lib/kubelet/pods/; claim templates become directories too."""
        fs_group = spec.get("securityContext", {}).get("fsGroup")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for claim in obj["spec"].get("volumeClaimTemplates", []):
            volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"], "claim": True}
        argv: list[str] = []
        for mount in main.get("volumeMounts", []):
            vol = volumes.get(mount["name"])
            if vol is None:
                raise PodError(f"volume {mount['name']} is not defined")
            host = self.workdir / pod_name / mount["name"]
            if not host.exists():
                host.mkdir(parents=True)
                self._fill(vol, host, fs_group)
            source = host / mount["subPath"] if "subPath" in mount else host
            options = (
                "ro" if mount.get("readOnly") or "configMap" in vol or "secret" in vol else "rw"
            )
            argv += ["--volume", f"{source}:{mount['mountPath']}:{options}"]
        return argv

    def _fill(self, vol: Doc, host: Path, fs_group: int | None) -> None:
        if "emptyDir" in vol:
            host.chmod(0o777)  # the kubelet's emptyDir mode
        elif vol.get("claim"):
            # A fresh volume as a provisioner hands it over, then fsGroup's ownership.
            if fs_group is not None:
                os.chown(host, 0, fs_group)
            host.chmod(0o2775)
        elif "configMap" in vol or "secret" in vol:
            if "configMap" in vol:
                data = self.manifests.configmap(vol["configMap"]["name"])
                mode = vol["configMap"].get("defaultMode", 0o644)
            else:
                doc = self.manifests.find("Secret", vol["secret"]["secretName"])
                data = {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
                mode = vol["secret"].get("defaultMode", 0o644)
            for key, text in data.items():
                path = host / key
                path.write_text(text)
                path.chmod(mode)
            host.chmod(0o755)
        else:
            raise PodError(f"volume {vol['name']}: unsupported kind {sorted(vol)}")


def heartbeat(redis_url: str, pod: Pod) -> Callable[[], bool]:
    """A :meth:`Pod.wait_ready` hint for a decoder pod: its heartbeat is in Redis (what
    its probe, ``ksc check worker``, looks for), checked from here."""
    prefix = next(
        (str(e["value"]) for e in pod.main.get("env", []) if e["name"] == "KSC_PREFIX"), "ksc"
    )
    key = Keys(prefix).worker(pod.name)

    def check() -> bool:
        with suppress(OSError, RedisError), Redis.from_url(redis_url) as client:
            return bool(client.exists(key))
        return False

    return check


def free_ports(count: int) -> list[int]:
    """``count`` different free loopback ports."""
    ports: set[int] = set()
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.add(s.getsockname()[1])
    return sorted(ports)


def remove_orphans() -> list[str]:
    """Remove containers left by a process that died before it cleaned up (its owner
    pid is gone); those of live processes are left alone."""
    out = _podman(
        "ps",
        "--all",
        "--filter",
        f"label={LABEL}",
        "--format",
        '{{.Names}} {{index .Labels "' + LABEL + '.owner"}}',
        check=False,
    ).stdout
    orphans = []
    for line in out.splitlines():
        name, _, owner = line.partition(" ")
        if owner.isdigit() and not _alive(int(owner)):
            orphans.append(name)
    if orphans:
        _podman("rm", "--force", "--time", "0", *orphans, timeout=120, check=False)
    return orphans


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def podman_missing() -> str | None:
    """Why the pods cannot run here (None when they can)."""
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make images installs it)"
    if os.geteuid() != 0:
        return "the container stage runs rootful podman: run it as root"
    return None
