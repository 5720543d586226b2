"""Render the Helm chart `helm/serval` offline and look inside what it renders.

`render(values)` runs Helm's own template engine (helm-python-sdk: Helm's Go SDK as a
bundled shared library, no helm binary, no cluster) and returns the parsed objects;
the rest are small pure helpers over those objects that the chart tests share:
which pod templates there are, every container in them, and the command line a
container would run once the kubelet has expanded its `$(VAR)` references.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "serval"
RELEASE = "serval"
NAMESPACE = "serval-system"

Obj = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")

# Values the kubelet would put into downward-API variables; only their shape matters.
FIELD_SAMPLES = {
    "metadata.name": "serval-registry-5d8c7b9f4-abcde",
    "metadata.namespace": NAMESPACE,
    "spec.nodeName": "node-1",
    "status.hostIP": "192.0.2.10",
    "status.podIP": "192.0.2.20",
}


# Value combinations the chart tests render: the defaults, each switch and the extremes.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-etcd": {
        "etcd": {"external": {"endpoints": ["etcd-a.db.example:2379", "etcd-b.db.example:2379"]}}
    },
    "no-dashboard": {"dashboard": {"enabled": False}},
    "ingress": {
        "dashboard": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "host": "serval.example.com",
                "annotations": {"nginx.ingress.kubernetes.io/affinity": "cookie"},
                "tls": [{"secretName": "serval-tls", "hosts": ["serval.example.com"]}],
            }
        }
    },
    "large": {
        "etcd": {"replicas": 5, "podAntiAffinity": "hard"},
        "registry": {"replicas": 10, "pdb": {"minAvailable": 7}},
        "dns": {"replicas": 4},
        "dashboard": {"replicas": 3, "pdb": {"enabled": True}},
    },
    "service-monitors": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "existing-secret": {
        "dashboard": {
            "auth": {
                "existingSecret": "ops-dashboard",
                "adminTokenKey": "token",
                "tokenFileSecret": "ops-tokens",
            },
            "openReads": True,
        }
    },
    "small": {
        "etcd": {"replicas": 1},
        "registry": {"replicas": 1},
        "dns": {"enabled": False},
        "agent": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "serviceAccount": {"create": False},
    },
    "options": {
        "listenHost": "::",
        "fullnameOverride": "sv",
        "dns": {
            "forwarder": "10.96.0.10:53",
            "zone": "services.example.",
            "service": {"clusterIP": "10.96.0.53"},
        },
        "agent": {
            "salAddresses": ["0.0.0.0", "::"],
            "zone": "dc1-a",
            "region": "dc1",
            "prepareSocketDir": False,
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}
            ],
        },
        "etcd": {"persistence": {"storageClass": "fast-ssd", "size": "20Gi"}},
        "imagePullSecrets": [{"name": "regcred"}],
        "commonLabels": {"team": "platform"},
    },
}


def render(values: Mapping[str, Any] | None = None) -> list[Obj]:
    """Every object the chart renders with `values` (NOTES.txt left out), in template order.

    Raises helm_python.HelmValuesError (the values schema refused the values) or
    helm_python.HelmRenderError (a template failed, e.g. a `fail` check)."""
    return json.loads(_render_json(json.dumps(values or {}, sort_keys=True)))  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=64)
def _render_json(values_json: str) -> str:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(
            values=json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    objects = [
        doc
        for name in sorted(files)
        if name.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(files[name])
        if doc
    ]
    return json.dumps(objects)


def notes(values: Mapping[str, Any] | None = None) -> str:
    """The rendered NOTES.txt."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=dict(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for name, text in files.items() if name.endswith("NOTES.txt"))


def chart_values() -> Obj:
    """The chart's default values (values.yaml)."""
    with helm.Chart.load(CHART) as chart:
        return chart.values


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    """Objects of `kind` (and `name` when given)."""
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    """The one object of `kind` named `name`; AssertionError when there is not exactly one."""
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(objects: list[Obj]) -> list[Obj]:
    """The Deployments, StatefulSets and DaemonSets."""
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def component(obj: Obj) -> str:
    """The object's app.kubernetes.io/component label."""
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def containers(workload: Obj, *, init: bool = True) -> Iterator[Obj]:
    """The containers of a workload's pod template, init containers first when `init`."""
    spec = workload["spec"]["template"]["spec"]
    if init:
        yield from spec.get("initContainers", [])
    yield from spec["containers"]


def config_maps(objects: list[Obj]) -> dict[str, dict[str, str]]:
    """ConfigMap name → its data."""
    return {o["metadata"]["name"]: o.get("data", {}) for o in find(objects, "ConfigMap")}


def container_env(container: Obj, objects: list[Obj]) -> dict[str, str]:
    """The environment the container would get: envFrom ConfigMaps (which must exist in
    `objects`), then `env` (literal values, downward-API samples, a placeholder for secrets)."""
    maps = config_maps(objects)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in maps, f"container {container['name']}: envFrom names a missing ConfigMap {name}"
        env.update(maps[name])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = FIELD_SAMPLES[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[var["name"]] = "secret-value-from-" + json.dumps(var["valueFrom"], sort_keys=True)
    return env


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion in command and args; an undefined variable is an error
    here (the kubelet would leave the reference as it is, which is always a chart bug)."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in env, f"$({name}) is not defined in the container's environment"
        return env[name]

    return _VAR_REF.sub(sub, text)


def command_line(container: Obj, objects: list[Obj]) -> list[str]:
    """command + args after expansion (command empty: the image's ENTRYPOINT comes first)."""
    env = container_env(container, objects)
    return [expand(a, env) for a in [*container.get("command", []), *container.get("args", [])]]
