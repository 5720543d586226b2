"""`serval up` end to end: the real command starts etcd and a registry, the CLI
talks to it, and SIGINT stops every process it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import psutil
import pytest

from registry.raft.local_etcd import free_ports

pytestmark = pytest.mark.integration


def serval(*args: str, registry: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args, "--registry", registry],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serval_up_runs_the_cluster_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    etcd_port, peer_port, registry_port, dns_port, dash_port = free_ports("127.0.0.1", 5)
    up = subprocess.Popen(
        [
            sys.executable, "-m", "deploy.cli", "up", "--state-dir", str(tmp_path / "state"),
            "--etcd-port", str(etcd_port), "--etcd-peer-port", str(peer_port),
            "--registry-port", str(registry_port), "--dns-port", str(dns_port),
            "--dashboard-port", str(dash_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    registry = f"127.0.0.1:{registry_port}"
    try:
        assert up.stdout is not None
        banner = ""
        deadline = time.monotonic() + 60
        while "Ctrl-C stops everything" not in banner and time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            banner += line
        assert "Serval local cluster is up" in banner, banner
        children = psutil.Process(up.pid).children(recursive=True)
        assert {p.name() for p in children} >= {"etcd"}

        reg = serval("register", "web.local", "w-1", "-a", "127.0.0.1", "-p", "8080", "--detach", "--json",
                     registry=registry)  # fmt: skip
        assert reg.returncode == 0, reg.stderr
        revision = json.loads(reg.stdout)["revision"]
        res = serval("resolve", "web.local", "--json", registry=registry)
        assert res.returncode == 0, res.stderr
        assert [i["instance_id"] for i in json.loads(res.stdout)["instances"]] == ["w-1"]
        assert int(revision) > 0
        assert f"dig @127.0.0.1 -p {dns_port} payments.prod.svc.serval SRV" in banner
        answer: list[str] = []
        deadline = time.monotonic() + 10
        while not answer and time.monotonic() < deadline:  # the bridge follows the registry
            q = dns.message.make_query("web.local.svc.serval.", "A")
            r = dns.query.udp(q, "127.0.0.1", port=dns_port, timeout=2)
            answer = [rd.to_text() for rrset in r.answer for rd in rrset]
            time.sleep(0.05)
        assert answer == ["127.0.0.1"]
        status = serval("status", "--json", registry=registry)
        assert json.loads(status.stdout)["replica_id"] == "local-1"
        token_file = tmp_path / "state" / "dashboard-tokens"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().split(":", 2)[2].strip()
        assert f"http://127.0.0.1:{dash_port}" in banner and f"admin token: {token}" in banner
        req = urllib.request.Request(
            f"http://127.0.0.1:{dash_port}/api/v1/services?q=web",
            headers={"authorization": f"Bearer {token}"},
        )
        deadline = time.monotonic() + 10
        names: list[str] = []
        while not names and time.monotonic() < deadline:
            with urllib.request.urlopen(req, timeout=2) as resp:
                names = [s["name"] for s in json.loads(resp.read())["services"]]
            time.sleep(0.05)
        assert names == ["web.local"]
        bad = serval(
            "register", "bad_name", "w-1", "-a", "127.0.0.1", "-p", "80", "--detach", registry=registry
        )
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=30)
    assert up.returncode == 0, out
    assert "nothing left running" in out
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child
    assert not any(str(tmp_path) in cmdline(p) for p in psutil.process_iter() if p.pid != os.getpid())


def cmdline(process: psutil.Process) -> str:
    """The command line of `process`; empty for one that exited or is a zombie meanwhile."""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""
