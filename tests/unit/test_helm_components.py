"""The Helm chart `helm/serval`, component by component: etcd's membership flags, PDBs,
NetworkPolicies, the DNS Service, the agent DaemonSet, the dashboard's Secret and Ingress,
ServiceMonitors; the values schema's and the templates' refusals of bad values; the
chart README documenting every value. Rendered for real (see `test_helm_chart.py`).
"""

from __future__ import annotations

import base64
from typing import Any

import helm_python as helm
import pytest

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

# --- etcd -------------------------------------------------------------------------------


@pytest.mark.parametrize("members", [1, 3, 5, 7])
def test_etcd_initial_cluster_uses_the_stable_names(members: int) -> None:
    objects = render({"etcd": {"replicas": members}})
    sts = one(objects, "StatefulSet", "serval-etcd")
    assert sts["spec"]["replicas"] == members
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    headless = one(objects, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    (c,) = containers(sts)
    flags = dict(a.split("=", 1) for a in c["args"])
    domain = f"serval-etcd-headless.{NAMESPACE}.svc.cluster.local"
    expected = ",".join(f"serval-etcd-{i}=http://serval-etcd-{i}.{domain}:2380" for i in range(members))
    assert flags["--initial-cluster"] == expected
    assert flags["--name"] == "$(POD_NAME)"
    assert flags["--initial-advertise-peer-urls"] == (
        "http://$(POD_NAME).serval-etcd-headless.$(POD_NAMESPACE).svc.cluster.local:2380"
    )
    env = hc.container_env(c, objects)
    pod0 = dict(env, POD_NAME="serval-etcd-0")
    assert hc.expand(flags["--initial-advertise-peer-urls"], pod0) == f"http://serval-etcd-0.{domain}:2380"
    registry_env = hc.config_maps(objects)["serval-registry"]
    assert registry_env["SERVAL_ETCD"] == ",".join(f"serval-etcd-{i}.{domain}:2379" for i in range(members))
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/var/lib/etcd"} in c["volumeMounts"]
    assert flags["--data-dir"].startswith("/var/lib/etcd/")
    assert "podAntiAffinity" in sts["spec"]["template"]["spec"]["affinity"]


def test_external_etcd_renders_no_etcd_objects() -> None:
    objects = render(SCENARIOS["external-etcd"])
    assert [o for o in objects if component(o) == "etcd"] == []
    assert (
        hc.config_maps(objects)["serval-registry"]["SERVAL_ETCD"]
        == "etcd-a.db.example:2379,etcd-b.db.example:2379"
    )


# --- PDBs -------------------------------------------------------------------------------


def test_pdbs() -> None:
    def budgets(values: dict[str, Any]) -> dict[str, int]:
        return {component(p): p["spec"]["minAvailable"] for p in find(render(values), "PodDisruptionBudget")}

    assert budgets({}) == {"etcd": 2, "registry": 1, "dns": 1}
    assert budgets(SCENARIOS["large"]) == {"etcd": 3, "registry": 7, "dns": 1, "dashboard": 1}
    # A single replica gets no budget: it could only block node drains.
    assert budgets(SCENARIOS["small"]) == {}
    for pdb in find(render(), "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component(pdb)


# --- network policies -------------------------------------------------------------------


def selector_component(peer: Obj) -> str | None:
    """The component a NetworkPolicy peer's pod selector names (None: not a pod selector)."""
    name = peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
    return None if name is None else str(name)


def test_etcd_is_reachable_only_from_registry_and_peers() -> None:
    objects = render()
    policy = one(objects, "NetworkPolicy", "serval-etcd")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        assert "from" in rule, "a rule without `from` admits every source"
        assert {selector_component(p) for p in rule["from"]} <= {"registry", "etcd"}
        assert all(set(p) == {"podSelector"} for p in rule["from"])
    by_source = {
        selector_component(r["from"][0]): {p["port"] for p in r["ports"]} for r in policy["spec"]["ingress"]
    }
    assert by_source == {"registry": {2379}, "etcd": {2379, 2380}}


def test_registry_policy_admits_dns_dashboard_and_agents() -> None:
    objects = render()
    policy = one(objects, "NetworkPolicy", "serval-registry")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 7070, "protocol": "TCP"}]
    sources = {selector_component(p) for p in rule["from"]}
    assert {"dns", "dashboard"} <= sources
    assert {p["ipBlock"]["cidr"] for p in rule["from"] if "ipBlock" in p} == {"0.0.0.0/0", "::/0"}
    narrowed = render({"networkPolicy": {"agentCIDRs": ["10.1.0.0/16"], "registryClients": []}})
    (rule,) = one(narrowed, "NetworkPolicy", "serval-registry")["spec"]["ingress"]
    assert [p for p in rule["from"] if "podSelector" not in p] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}]


def test_every_pod_except_host_network_ones_is_under_a_policy() -> None:
    objects = render()
    policies = find(objects, "NetworkPolicy")
    for w in workloads(objects):
        labels = w["spec"]["template"]["metadata"]["labels"]
        covered = any(p["spec"]["podSelector"]["matchLabels"].items() <= labels.items() for p in policies)
        assert covered == (not w["spec"]["template"]["spec"].get("hostNetwork", False)), w["metadata"]["name"]


# --- components -------------------------------------------------------------------------


def test_dns_service_maps_53_to_an_unprivileged_port() -> None:
    objects = render()
    svc = one(objects, "Service", "serval-dns")
    ports = {(p["protocol"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"] if p["port"] == 53}
    assert ports == {("UDP", 53, "dns-udp"), ("TCP", 53, "dns-tcp")}
    (c,) = containers(one(objects, "Deployment", "serval-dns"))
    listen = next(a for a in c["args"] if a.startswith("--listen="))
    port = int(listen.rpartition(":")[2])
    assert port >= 1024
    assert {p["containerPort"] for p in c["ports"] if p["name"].startswith("dns-")} == {port}


def test_agent_daemonset() -> None:
    agent = one(render(), "DaemonSet", "serval-agent")
    pod = agent["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "socket-dir"]
    assert volume["hostPath"] == {"path": "/run/serval", "type": "DirectoryOrCreate"}
    custom = one(render(SCENARIOS["options"]), "DaemonSet", "sv-agent")["spec"]["template"]["spec"]
    assert custom["tolerations"] == SCENARIOS["options"]["agent"]["tolerations"]
    assert "initContainers" not in custom
    (c,) = custom["containers"]
    assert [a for a in c["args"] if a.startswith("--sal-listen")] == [
        "--sal-listen=0.0.0.0:7946",
        "--sal-listen=[::]:7946",
    ]


def test_dashboard_admin_token_from_a_generated_secret() -> None:
    objects = render()
    secret = one(objects, "Secret", "serval-dashboard")
    token = base64.b64decode(secret["data"]["admin-token"]).decode()
    assert len(token) >= 16  # the dashboard refuses shorter tokens
    (c,) = containers(one(objects, "Deployment", "serval-dashboard"))
    (var,) = [e for e in c["env"] if e["name"] == "SERVAL_DASHBOARD_ADMIN_TOKEN"]
    assert var["valueFrom"]["secretKeyRef"] == {"name": "serval-dashboard", "key": "admin-token"}
    assert not any(a.startswith("--token-file") for a in c["args"])


def test_dashboard_existing_secret_and_token_file() -> None:
    objects = render(SCENARIOS["existing-secret"])
    assert find(objects, "Secret") == []
    deployment = one(objects, "Deployment", "serval-dashboard")
    (c,) = containers(deployment)
    (var,) = [e for e in c["env"] if e["name"] == "SERVAL_DASHBOARD_ADMIN_TOKEN"]
    assert var["valueFrom"]["secretKeyRef"] == {"name": "ops-dashboard", "key": "token"}
    assert "--token-file=/etc/serval/dashboard/tokens" in c["args"] and "--open-reads" in c["args"]
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tokens"]
    assert volume["secret"]["secretName"] == "ops-tokens"


def test_no_dashboard_renders_no_dashboard_objects() -> None:
    objects = render(SCENARIOS["no-dashboard"])
    assert [o for o in objects if component(o) == "dashboard"] == []
    assert "Dashboard" not in hc.notes(SCENARIOS["no-dashboard"])


def test_ingress() -> None:
    assert find(render(), "Ingress") == []
    objects = render(SCENARIOS["ingress"])
    ingress = one(objects, "Ingress", "serval-dashboard")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "serval.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "serval-dashboard", "port": {"name": "http"}}
    assert one(objects, "Service", "serval-dashboard")
    assert "https://serval.example.com/" in hc.notes(SCENARIOS["ingress"])


def test_service_monitors_select_services_with_their_port() -> None:
    assert find(render(), "ServiceMonitor") == []
    objects = render(SCENARIOS["service-monitors"])
    monitors = find(objects, "ServiceMonitor")
    assert {component(m) for m in monitors} == {"etcd", "dns", "dashboard", "agent"}
    for m in monitors:
        assert m["metadata"]["labels"]["release"] == "prom"
        assert m["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = m["spec"]["endpoints"]
        selected = [
            s
            for s in find(objects, "Service")
            if m["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
            and endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
        ]
        assert selected, f"ServiceMonitor {m['metadata']['name']} scrapes nothing"


# --- the values schema ------------------------------------------------------------------

BAD_VALUES = [
    ({"registry": {"replicas": 0}}, "at '/registry/replicas': minimum: got 0, want 1"),
    ({"etcd": {"replicas": 4}}, "at '/etcd/replicas': value must be one of 1, 3, 5, 7, 9"),
    ({"etcd": {"replicas": 0}}, "at '/etcd/replicas': value must be one of 1, 3, 5, 7, 9"),
    ({"registry": {"port": "7070"}}, "at '/registry/port': got string, want integer"),
    ({"dns": {"port": 53.5}}, "at '/dns/port': got number, want integer"),
    ({"dashboard": {"port": 70000}}, "at '/dashboard/port': maximum: got 70,000, want 65,535"),
    ({"registry": {"replica": 3}}, "at '/registry': additional properties 'replica' not allowed"),
    ({"etcdReplicas": 3}, "at '': additional properties 'etcdReplicas' not allowed"),
    ({"dns": {"zone": "svc.serval"}}, "at '/dns/zone'"),
    ({"registry": {"resources": {"limits": None}}}, "at '/registry/resources': missing property 'limits'"),
    (
        {"etcd": {"podAntiAffinity": "sometimes"}},
        "at '/etcd/podAntiAffinity': value must be one of 'soft', 'hard'",
    ),
    ({"securityContext": {"runAsUser": 0}}, "at '/securityContext/runAsUser': minimum: got 0, want 1"),
    ({"etcd": {"external": {"endpoints": ["http://etcd:2379/"]}}}, "at '/etcd/external/endpoints/0'"),
    ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "at '/metrics/serviceMonitor/interval'"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[str(v) for v, _ in BAD_VALUES])
def test_schema_refuses_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        render(values)
    assert message in str(refused.value)


CROSS_FIELD = [
    (
        {"registry": {"etcdMaxTxnOps": 256}},
        "registry.etcdMaxTxnOps (256) must not exceed etcd.settings.maxTxnOps (128)",
    ),
    (
        {"registry": {"replicas": 2, "pdb": {"minAvailable": 2}}},
        "registry.pdb.minAvailable (2) must be below",
    ),
    ({"dashboard": {"ingress": {"enabled": True, "host": ""}}}, "dashboard.ingress.host must be set"),
    ({"dns": {"port": 9153}}, "dns.port and dns.metricsPort must differ (both 9153)"),
    ({"agent": {"metricsPort": 7946}}, "agent.salPort and agent.metricsPort must differ (both 7946)"),
]


@pytest.mark.parametrize(("values", "message"), CROSS_FIELD, ids=[str(v) for v, _ in CROSS_FIELD])
def test_templates_refuse_inconsistent_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert message in str(refused.value)


def test_defaults_pass_the_schema() -> None:
    with helm.Chart.load(hc.CHART) as chart:
        chart.validate_schema(chart.merge_values({}))


# --- documentation ----------------------------------------------------------------------

FREE_FORM = {
    "resources",
    "nodeSelector",
    "tolerations",
    "affinity",
    "podAnnotations",
    "annotations",
    "labels",
}
FREE_FORM |= {"commonLabels", "updateStrategy"}


def value_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every value, free-form maps counted as one value."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in FREE_FORM:
            out += value_paths(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def test_readme_documents_every_value() -> None:
    readme = (hc.CHART / "README.md").read_text()
    paths = value_paths(hc.chart_values())
    assert len(paths) > 100
    assert [p for p in paths if f"`{p}`" not in readme] == []
