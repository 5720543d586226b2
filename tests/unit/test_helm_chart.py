"""The Helm chart `helm/serval`, rendered for real (Helm's engine via helm-python-sdk) with its
defaults and several value combinations (`tests.support.helm_chart.SCENARIOS`), then checked
without a cluster (per component: `test_helm_components.py`):

- every object validates (kubernetes-validate, strict: no unknown fields) against the oldest
  and newest Kubernetes versions the chart supports;
- `helm lint --strict` has nothing to say;
- invariants of every scenario: probes, resources, security contexts, labels, Services;
- every Serval container's command line is one `serval` accepts, with the environment its
  ConfigMaps give it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from typing import Any

import helm_python as helm
import kubernetes_validate
import kubernetes_validate.utils
import pytest

from deploy.cli import build_parser
from tests.support import helm_chart as hc
from tests.support.helm_chart import (
    NAMESPACE,
    SCENARIOS,
    Obj,
    component,
    containers,
    find,
    one,
    render,
    workloads,
)

# Oldest: the first release where gRPC probes are GA (1.27) — the registry's readiness probe
# is one. Newest: the newest release kubernetes-validate ships schemas for.
KUBE_VERSIONS = ("1.27.0", "1.37.0")


@pytest.fixture(params=sorted(SCENARIOS), ids=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, render(SCENARIOS[request.param])


def serval_containers(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(workload, container) of every container that runs the Serval image."""
    repo = hc.chart_values()["image"]["repository"]
    return [(w, c) for w in workloads(objects) for c in containers(w) if c["image"].startswith(repo + ":")]


# --- validation and lint ---------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_validates_strictly(scenario: tuple[str, list[Obj]], kube_version: str) -> None:
    _, objects = scenario
    assert objects
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{where} is invalid for Kubernetes {kube_version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            # Only the Prometheus Operator's CRD has no schema in kubernetes-validate.
            assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["kind"] == "ServiceMonitor", where


def test_kubernetes_validate_ships_both_versions() -> None:
    """A version it lacks would silently be checked against an older schema set."""
    shipped = {v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()}
    assert {v.rsplit(".", 1)[0] for v in KUBE_VERSIONS} <= shipped


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", ["defaults", "large", "external-etcd", "service-monitors"])
def test_lint_strict_is_clean(name: str, kube_version: str) -> None:
    report = helm.lint(
        hc.CHART, SCENARIOS[name], strict=True, namespace=NAMESPACE, kube_version="v" + kube_version
    )
    assert report["errors"] == []
    # Severity 1 (info) is only the missing icon (no hosted icon exists); 2+ are warnings/errors.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_app_version_is_the_package_version() -> None:
    with open(hc.ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    with helm.Chart.load(hc.CHART) as chart:
        assert chart.metadata["appVersion"] == version


# --- invariants of every scenario -------------------------------------------------------

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


def test_every_object_and_pod_has_the_standard_labels(scenario: tuple[str, list[Obj]]) -> None:
    _, objects = scenario
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "serval"
        assert labels["app.kubernetes.io/instance"] == hc.RELEASE
    for w in workloads(objects):
        pod_labels = w["spec"]["template"]["metadata"]["labels"]
        assert all(k in pod_labels for k in STANDARD_LABELS)
        selector = w["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        assert "app.kubernetes.io/version" not in selector, "selectors must not change across upgrades"


def test_every_container_has_resources_and_probes(scenario: tuple[str, list[Obj]]) -> None:
    _, objects = scenario
    for w in workloads(objects):
        for c in containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= res.get("requests", {}).keys(), where
            assert {"cpu", "memory"} <= res.get("limits", {}).keys(), where
        for c in containers(w, init=False):
            where = f"{w['metadata']['name']}/{c['name']}"
            assert "livenessProbe" in c and "readinessProbe" in c, f"{where} lacks a probe"


PROBES = ("livenessProbe", "readinessProbe")
EXPECTED_PROBES = {  # component → (liveness kind, readiness kind)
    "etcd": ("httpGet", "httpGet"),
    "registry": ("tcpSocket", "grpc"),
    "dashboard": ("httpGet", "httpGet"),
    "dns": ("httpGet", "tcpSocket"),
    "agent": ("tcpSocket", "httpGet"),
}


def test_probe_kinds_per_component() -> None:
    objects = render()
    for w in workloads(objects):
        (c,) = containers(w, init=False)
        kinds = tuple(next(k for k in ("httpGet", "tcpSocket", "grpc", "exec") if k in c[p]) for p in PROBES)
        assert kinds == EXPECTED_PROBES[component(w)], w["metadata"]["name"]


def test_registry_readiness_is_grpc_health_on_the_grpc_port() -> None:
    for values in ({}, {"registry": {"port": 9090}}):
        registry = one(render(values), "Deployment", "serval-registry")
        (c,) = containers(registry)
        (port,) = c["ports"]
        assert port["name"] == "grpc"
        assert (
            c["readinessProbe"]["grpc"]["port"]
            == port["containerPort"]
            == values.get("registry", {}).get("port", 7070)
        )
        assert f"--listen=0.0.0.0:{port['containerPort']}" in c["args"]


def test_security_contexts(scenario: tuple[str, list[Obj]]) -> None:
    _, objects = scenario
    for w in workloads(objects):
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc.get("privileged", False) is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            if c["name"] == "socket-dir":  # the documented exception: chown of the host directory
                assert component(w) == "agent" and c["command"][0] == "chown"
                assert sc["runAsUser"] == 0 and sc["capabilities"]["add"] == ["CHOWN"]
            else:
                assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
                assert "add" not in sc["capabilities"], where


def test_services_target_ports_exist_on_their_pods(scenario: tuple[str, list[Obj]]) -> None:
    _, objects = scenario
    for svc in find(objects, "Service"):
        selector = svc["spec"]["selector"]
        pods = [
            w
            for w in workloads(objects)
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"Service {svc['metadata']['name']} selects no workload"
        names = {(p["name"], p["protocol"]) for w in pods for c in containers(w) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert (port["targetPort"], port.get("protocol", "TCP")) in names, (svc["metadata"]["name"], port)


def test_configmaps_change_roll_the_pods(scenario: tuple[str, list[Obj]]) -> None:
    _, objects = scenario
    for w in workloads(objects):
        assert len(w["spec"]["template"]["metadata"]["annotations"]["checksum/config"]) == 64
    if scenario[0] == "defaults":
        before = one(objects, "Deployment", "serval-registry")["spec"]["template"]["metadata"]["annotations"]
        after = one(render({"logLevel": "DEBUG"}), "Deployment", "serval-registry")["spec"]["template"]
        assert before["checksum/config"] != after["metadata"]["annotations"]["checksum/config"]


# --- command lines -----------------------------------------------------------------------


def test_every_serval_command_line_is_accepted_by_serval(
    scenario: tuple[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each container of the Serval image runs `serval <its args>` (the image's ENTRYPOINT),
    with `$(VAR)`s expanded and the environment of its ConfigMaps, which also feeds the
    options' defaults ($SERVAL_REGISTRY, $SERVAL_ETCD, ...). Options must be spelled in
    full (argparse would accept a prefix; a renamed option must break this test)."""
    _, objects = scenario
    checked = set()
    for w, c in serval_containers(objects):
        argv = hc.command_line(c, objects)
        if c.get("command"):  # the agent's init container runs chown, not serval
            assert c["name"] == "socket-dir" and argv[0] == "chown"
            continue
        for key in [k for k in os.environ if k.startswith("SERVAL_")]:  # only this container's
            monkeypatch.delenv(key)
        for key, value in hc.container_env(c, objects).items():
            monkeypatch.setenv(key, value)
        parser = build_parser()
        args = parser.parse_args(argv)
        assert args.command == component(w)
        sub = subcommand_parser(parser, args.command)
        for arg in argv[1:]:
            if arg.startswith("--"):
                assert arg.split("=", 1)[0] in sub._option_string_actions, f"{w['metadata']['name']}: {arg}"
        check_effective_config(component(w), args, objects)
        checked.add(component(w))
    assert checked, "no Serval container rendered"


def subcommand_parser(parser: Any, command: str) -> Any:
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return action.choices[command]


def check_effective_config(name: str, args: Any, objects: list[Obj]) -> None:
    """What the process would end up with, per component."""
    (registry,) = [s for s in find(objects, "Service") if component(s) == "registry"]
    registry_address = (
        f"{registry['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{registry['spec']['ports'][0]['port']}"
    )
    if name == "registry":
        assert args.replica_id == hc.FIELD_SAMPLES["metadata.name"]
        assert args.etcd, "no etcd endpoints"
        for endpoint in args.etcd.split(","):
            host, _, port = endpoint.rpartition(":")
            assert host and port.isdigit()
    elif name in ("dns", "dashboard"):
        assert args.registry == registry_address
    elif name == "agent":
        assert args.registry == registry_address
        assert args.agent_id == hc.FIELD_SAMPLES["spec.nodeName"]
        assert args.metrics_addr == hc.FIELD_SAMPLES["status.hostIP"]
        assert args.socket.endswith("/agent.sock")


def test_agent_socket_path_is_the_one_apps_are_told() -> None:
    objects = render()
    agent = one(objects, "DaemonSet", "serval-agent")
    (c,) = containers(agent, init=False)
    env = hc.container_env(c, objects)
    assert f"--socket={env['SERVAL_AGENT_SOCKET']}" in c["args"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "socket-dir"]
    assert env["SERVAL_AGENT_SOCKET"].startswith(mount["mountPath"] + "/")


def test_etcd_flags_and_variables_are_etcds() -> None:
    """Every flag and ETCD_* variable the StatefulSet passes is an option etcd knows (checked
    against the etcd installed here, which `make system-deps` provides)."""
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.skip("etcd is not installed")
    help_text = subprocess.run([etcd, "--help"], capture_output=True, text=True, timeout=30).stdout
    objects = render()
    (c,) = containers(one(objects, "StatefulSet", "serval-etcd"))
    assert c["command"] == ["/usr/local/bin/etcd"]
    for arg in c["args"]:
        assert f"{arg.split('=', 1)[0]} " in help_text or f"{arg.split('=', 1)[0]}\n" in help_text, arg
    for key in hc.config_maps(objects)["serval-etcd"]:
        flag = "--" + key.removeprefix("ETCD_").lower().replace("_", "-")
        assert f"{flag} " in help_text or f"{flag}\n" in help_text, key
