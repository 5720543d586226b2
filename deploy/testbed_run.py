"""The test bed's I/O shell: run a `deploy.testbed.Plan` in namespaces (``serval testbed`` is in
`deploy.testbed_cli`).

`Testbed` (the Python API, used by the end-to-end tests) builds the plan's
topology as a `deploy.netns.NetnsLab`, starts each stage's components inside
their hosts, waits until every probe of the stage passes (probes run inside the
hosts: the root namespace never talks to the bed's network), and writes
``state.json`` in its state folder. The process that called `up` owns the bed:
`down` (or the lab's clean-up at interpreter exit) removes it, and if that
process is SIGKILLed, the next lab's `sweep` does.

``serval testbed up`` (`deploy.testbed_cli`) runs the same in a detached
supervisor process that owns the bed until SIGTERM, so the bed outlives the
command; `read_state` and `probe_all` serve ``status`` from any process.

A bed is named by its run id: ``--name`` (default ``tb``, namespaces
``sv-tb-<host>``) for the command, random hex for tests, so a user's bed and the
test suite's never collide; two live beds with the same name are refused (the
second cannot take the run's lock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from deploy.netcheck import parse_target, probe, probe_unix
from deploy.netns import NetnsLab
from deploy.testbed import (
    TOKEN_FILE,
    Component,
    Plan,
    TestbedSpec,
    agent_socket,
    plan,
    probe_argv,
)
from deploy.topology import LabNames, Topology, exec_in
from registry.processes import ChildProcess
from registry.raft.local_etcd import etcd_env, find_etcd

STATE_FILE = "state.json"
MARKER = ".serval-testbed"  # a folder holding it was made by `up` and may be deleted by `down`
START_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class Agent:
    """A running agent: its host, Unix socket and SAL endpoint."""

    host: str
    socket: Path
    sal_endpoint: str
    process: ChildProcess


class TestbedError(RuntimeError):
    """The bed could not be started (the message has the failing components' log tails) or found."""

    __test__: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True, slots=True)
class Health:
    """One component's probe result."""

    component: str
    namespace: str
    endpoint: str
    healthy: bool
    detail: str


class Testbed:
    """One bed, owned by this process: `up`, use, `down`. Not thread-safe; synchronous."""

    __test__: ClassVar[bool] = False

    def __init__(self, spec: TestbedSpec, state_dir: Path, *, run: str | None = None) -> None:
        self.spec = spec
        self.state_dir = state_dir.absolute()
        self.run_id = run or secrets.token_hex(3)
        self.plan: Plan = plan(
            spec, run=self.run_id, state_dir=self.state_dir, python=sys.executable, etcd_binary=find_etcd()
        )
        topology = Topology.from_dict(self.plan.topology)
        self.lab = NetnsLab(topology, self.state_dir / "logs", run=self.run_id)
        self.processes: dict[str, ChildProcess] = {}
        self._root_relay: ChildProcess | None = None
        self.exposed_dashboard: str | None = None

    # --- life cycle -------------------------------------------------------

    def up(self, timeout: float = START_TIMEOUT, *, expose_dashboard: str | None = None) -> None:
        """Build the namespaces, start the stages in order, each once the previous one is healthy,
        (with `expose_dashboard`, see `expose_dashboard`) and write ``state.json``. On any failure
        everything is removed and the error raised (`TestbedError` with the log tails of the
        components that failed)."""
        (self.state_dir / "agents").mkdir(parents=True, exist_ok=True)
        (self.state_dir / MARKER).write_text(self.run_id)
        self.lab.create()
        try:
            if self.spec.dashboard:
                from dashboard.auth import write_admin_token

                write_admin_token(self.state_dir / TOKEN_FILE)
            deadline = time.monotonic() + timeout
            for stage in self.plan.stages:
                for c in stage:
                    log = self.state_dir / "logs" / f"{c.name}.log"
                    env = etcd_env() if c.kind == "etcd" else None
                    self.processes[c.name] = self.lab.spawn(c.host, c.argv, log, name=c.name, env=env)
                self._wait_healthy(stage, deadline)
            if expose_dashboard:
                self.expose_dashboard(expose_dashboard)
            write_json(self.state_dir / STATE_FILE, self.record())
        except BaseException:
            self.down()
            raise

    def _wait_healthy(self, stage: tuple[Component, ...], deadline: float) -> None:
        """Run the stage's probes in parallel until all pass; fail fast if a component exits."""
        wait = max(deadline - time.monotonic(), 0.0)
        probes = {
            c.name: subprocess.Popen(
                exec_in(self.lab.namespace(c.host), probe_argv(c, wait)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for c in stage
        }
        try:
            while any(p.poll() is None for p in probes.values()):
                if [c for c in stage if not self.processes[c.name].running]:
                    break
                if [p for p in probes.values() if p.returncode not in (None, 0)]:
                    break
                time.sleep(0.05)
        finally:
            for p in probes.values():
                if p.poll() is None:
                    p.kill()
            errors = {name: p.communicate()[1].strip() for name, p in probes.items()}  # reaps, closes
        failed = [c for c in stage if probes[c.name].returncode != 0 or not self.processes[c.name].running]
        if failed:
            tails = "\n".join(
                f"{c.name} ({c.endpoint}): {errors[c.name] or 'probe exit ' + str(probes[c.name].returncode)}"
                f"\n{self.processes[c.name].log_tail()}"
                for c in failed
            )
            raise TestbedError(f"test bed {self.run_id}: not healthy:\n{tails}")

    def expose_dashboard(self, listen: str, timeout: float = 10.0) -> str:
        """Serve the dashboard on `listen` (a loopback ``host:port`` of the root namespace) and
        return its URL. Only through a Unix socket in the state folder: a relay inside the
        dashboard's namespace serves it and connects to the dashboard; a relay in the root
        namespace listens on `listen` and connects to that socket (`deploy.relay`). Both stop
        with the bed, and by themselves if this process dies."""
        check_loopback(listen, self.spec)
        host, port = parse_target(listen)
        sock = self.state_dir / "dashboard.sock"
        relay = [sys.executable, "-m", "deploy.relay"]
        owner = ["--owner-pid", str(os.getpid())]
        inner = [*relay, "unix-to-tcp", "--listen", str(sock), "--connect"]
        inner += [self.plan.component("dashboard").endpoint.removeprefix("http://"), *owner]
        child = self.lab.spawn("dashboard", inner, self.state_dir / "logs" / "relay-dashboard.log")
        self.processes["relay-dashboard"] = child
        outer = [*relay, "tcp-to-unix", "--listen", listen, "--connect", str(sock), *owner]
        self._root_relay = ChildProcess("relay-root", outer, self.state_dir / "logs" / "relay-root.log")
        child.wait_until(lambda: probe_unix(str(sock), 1.0) is None, timeout)
        self._root_relay.start()
        self._root_relay.wait_until(lambda: probe(host, port, 1.0, echo=False) is None, timeout)
        self.exposed_dashboard = f"http://{listen}"
        return self.exposed_dashboard

    def down(self) -> None:
        """Stop every process and remove the namespaces (idempotent); the state folder stays."""
        if self._root_relay is not None:
            self._root_relay.stop(grace=2.0)
            self._root_relay = None
        self.lab.destroy()
        self.processes.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / STATE_FILE).unlink()

    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # --- using it -----------------------------------------------------------

    @property
    def registry(self) -> str:
        """Every registry replica's target, comma-separated (``serval --registry``); ``none`` if none."""
        return ",".join(self.plan.endpoints("registry")) or "none"

    @property
    def agents(self) -> dict[str, Agent]:
        """The running agents by host."""
        return {
            c.host: Agent(c.host, agent_socket(self.state_dir, c.host), c.endpoint, self.processes[c.name])
            for c in self.plan.components
            if c.kind == "agent"
        }

    def namespace(self, host: str) -> str:
        return self.lab.namespace(host)

    def address(self, host: str, where: str = "lan", version: int = 4) -> str:
        return self.lab.address(host, where, version)

    def run(self, host: str, argv: list[str], *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """`argv` run inside `host` to completion (see `NetnsLab.run`)."""
        return self.lab.run(host, argv, timeout=timeout)

    def record(self) -> dict[str, Any]:
        """What ``state.json`` holds for this bed (see `state_record`)."""
        return state_record(self.plan, self.run_id, os.getpid(), self.exposed_dashboard)

    def status(self) -> list[Health]:
        """Every component's health, probed inside its host."""
        return probe_all(self.record())


# --- the state file (what `status` and `down` need, from any process) --------


def state_record(p: Plan, run: str, pid: int, exposed: str | None = None) -> dict[str, Any]:
    """The JSON written to ``state.json`` once the bed is up (pure). `exposed`: the dashboard's
    URL on the root namespace's loopback, probed there (namespace "")."""
    names = LabNames(run)
    relay = []
    if exposed:
        probe = [*p.component("dashboard").probe[:4], f"{exposed}/healthz", "--wait", "0.0"]
        relay = [
            {
                "name": "exposed",
                "kind": "relay",
                "host": "",
                "namespace": "",
                "endpoint": exposed,
                "probe": probe,
            }
        ]
    return {
        "name": run,
        "pid": pid,
        "state_dir": str(p.state_dir),
        "namespaces": {h: names.namespace(h) for h in p.topology["hosts"]},
        "addresses": p.addresses,
        "registry": ",".join(p.endpoints("registry")),
        "components": [
            {
                "name": c.name,
                "kind": c.kind,
                "host": c.host,
                "namespace": names.namespace(c.host),
                "endpoint": c.endpoint,
                "probe": probe_argv(c, 0.0),
            }
            for c in p.components
        ]
        + relay,
    }


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write `record` atomically (readers never see half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The bed's ``state.json``, or None if there is none (not up, or not yet)."""
    try:
        record: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    return record


def probe_all(record: dict[str, Any], timeout: float = 10.0) -> list[Health]:
    """Run every component's probe (once, in parallel) inside its namespace (none: the root's)."""
    procs = [
        (
            c,
            subprocess.Popen(
                exec_in(c["namespace"], c["probe"]) if c["namespace"] else c["probe"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for c in record["components"]
    ]
    results = []
    for c, proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            err = f"probe timed out after {timeout:.0f}s"
        ok = proc.returncode == 0
        detail = "ok" if ok else (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        results.append(Health(c["name"], c["namespace"], c["endpoint"], ok, detail))
    return results


def check_loopback(listen: str, spec: TestbedSpec) -> None:
    """Raise ValueError unless `listen` is ``host:port`` with a loopback host and the bed has a dashboard."""
    host, _ = parse_target(listen)
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"--expose-dashboard {listen}: only a loopback address")
    if not spec.dashboard:
        raise ValueError("--expose-dashboard: the bed has no dashboard")
