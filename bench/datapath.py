"""`make bench-datapath`: throughput, connection set-up, migration and agent memory of the data path.

    python -m bench.datapath [--quick] [--only PHASE ...] [--json PATH] [--keep] [--strict]
                             [--address-poll S]

Builds one lab (`deploy.netns`: hosts ``etcd``, ``registry``, ``client`` and
``server`` on one network) and runs every process inside it: etcd, a registry
replica, one ``serval agent`` on ``client`` and on ``server``, iperf3, haproxy
and the benchmark's apps (`bench.datapath_apps`). The root namespace gets no
address and sends no traffic to the lab; it only starts processes in it and
reads ``/proc`` (CPU time, RSS). Phases, in order:

1. throughput: iperf3 direct, through the two agents, through two haproxies;
2. connection set-up: by name through the agents vs. direct TCP;
3. migration: the server's address changes during a paced transfer;
4. memory: the client agent's RSS before and after 100,000 registered entries.

``--only PHASE`` (repeatable) runs just those phases, e.g. ``--only throughput``.

Prints the tables and writes every figure as JSON (default
``.bench/datapath.json``). Everything started is stopped and the lab removed
on success, error, Ctrl-C or SIGTERM (a second signal during clean-up is
ignored); the run folder (logs) is removed after a successful run and kept
after a failed one (``--keep``: always kept).

Exit status: 0 when the run completed (``--strict``: and every target was
met), 1 on failure or a missed target under ``--strict``, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import CpuMeter, machine_info, proc_status_kb, progress
from bench.datapath_report import combine_runs, iperf_summary, render, stall_after, summary_rows
from bench.runner import run_benchmark
from bench.stats import latency_summary_ms
from deploy.netns import NetnsLab, unavailable_reason
from deploy.testbed import AGENT_METRICS_PORT, AgentSpec, TestbedSpec
from deploy.testbed_run import Agent, Testbed
from registry.processes import ChildProcess

IPERF_PORT = 5201  # iperf3 server (server host, all addresses) and the client agent's upstream port
HAPROXY_CLIENT_PORT = 5202  # haproxy in `client`, 127.0.0.1
HAPROXY_SERVER_PORT = 5203  # haproxy in `server`, its lan address
SPLICE_CLIENT_PORT = 5204  # haproxy with splice in `client`, 127.0.0.1
SPLICE_SERVER_PORT = 5205  # haproxy with splice in `server`, its lan address
TCP_SERVER_PORT = 9100  # the plain TCP server of the set-up baseline
METRICS_PORT = AGENT_METRICS_PORT  # both agents' Prometheus endpoint (127.0.0.1 inside their host)
IPERF_NAME = "iperf.bench"
SETUP_NAME = "setup.bench"
MIGRATION_NAME = "migrate.bench"
APPS = [sys.executable, "-m", "bench.datapath_apps"]
PHASES = ("throughput", "setup", "migration", "memory")


@dataclass(frozen=True)
class Settings:
    """Counts and durations of one run (`FULL` or `QUICK`)."""

    mode: str
    iperf_seconds: int = 10
    iperf_rounds: int = 2  # direct, Serval, haproxy in turn, this many times (noise on a small machine)
    connections: int = 2000
    concurrency: int = 16
    migrations: int = 5
    migration_lead_s: float = 2.0  # transfer running before the first change
    # between changes (and after the last): this plus a random share of the address poll
    # interval, so that the changes fall at different phases of the agents' poll timer
    migration_spacing_s: float = 2.5
    pace_ms: float = 1.0
    chunk: int = 1024
    stall_threshold_ms: float = 20.0  # a longer gap is a stall (label only)
    stall_start_within_ms: float = 50.0  # the stall's gap begins at most this long after the change
    entries: int = 100_000
    entry_services: int = 100_000  # one instance per service: every entry is its own table rule
    address_poll_s: float = 0.5  # the agents' --address-poll


FULL = Settings(mode="full")
QUICK = Settings(
    mode="quick",
    iperf_seconds=3,
    iperf_rounds=1,
    connections=200,
    migrations=2,
    entries=10_000,
    entry_services=10_000,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.datapath", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts and short runs: about a minute")
    p.add_argument(
        "--json", type=Path, default=Path(".bench/datapath.json"), help="output (default %(default)s)"
    )
    p.add_argument(
        "--bench-dir", type=Path, default=Path(".bench"), help="where run folders go (default %(default)s)"
    )
    p.add_argument("--keep", action="store_true", help="keep the run folder (logs, etcd data)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument(
        "--only", action="append", choices=PHASES, help="run only this phase (repeatable; default: all)"
    )
    p.add_argument(
        "--address-poll", type=float, default=None, help="the agents' --address-poll in seconds (default 0.5)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.address_poll is not None:
        settings = replace(settings, address_poll_s=args.address_poll)
    reason = unavailable_reason()
    if reason is not None:
        print(f"bench: network namespaces unavailable: {reason}", file=sys.stderr)
        return 1
    missing = [tool for tool in ("iperf3", "haproxy") if shutil.which(tool) is None]
    if missing:
        print(f"bench: {', '.join(missing)} not installed: run `make bench-deps` (as root)", file=sys.stderr)
        return 1
    phases = tuple(p for p in PHASES if p in (args.only or PHASES))
    return run_benchmark(
        args,
        "datapath",
        lambda run_dir: run_all(settings, run_dir, phases),
        render,
        summary_rows,
        data_globs=["etcd"],
    )


class Bench:
    """The lab and what runs in it; one method per phase."""

    def __init__(self, bed: Testbed, settings: Settings, run_dir: Path) -> None:
        self.lab: NetnsLab = bed.lab
        self.settings = settings
        self.run_dir = run_dir
        self.server_ip = bed.address("server")
        self.registry = bed.registry
        self.agents: dict[str, Agent] = bed.agents

    def pid(self, host: str) -> int:
        proc = self.agents[host].process.proc
        assert proc is not None
        return proc.pid

    def socket(self, host: str) -> str:
        return str(self.agents[host].socket)

    # ---- helpers -------------------------------------------------------------------------------

    def wait_listening(self, host: str, port: int, child: ChildProcess, timeout: float = 20) -> None:
        """Until something listens on TCP `port` in `host` (``ss`` inside the host: no traffic)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.lab.run(host, ["ss", "-Hltn", f"sport = :{port}"], timeout=10)
            if out.stdout.strip():
                return
            if time.monotonic() > deadline or not child.running:
                raise RuntimeError(f"{child.name} is not listening on port {port}:\n{child.log_tail()}")
            time.sleep(0.2)

    def app(self, host: str, *args: str, timeout: float) -> dict[str, Any]:
        """Run a `bench.datapath_apps` command in `host`; its JSON output."""
        out = self.lab.run(host, [*APPS, *args], timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} in {host} failed ({out.returncode}):\n{out.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    # ---- 1. throughput -------------------------------------------------------------------------

    def throughput(self) -> dict[str, Any]:
        lab, s = self.lab, self.settings
        iperf = lab.spawn(
            "server", ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"], name="iperf3-server"
        )
        self.wait_listening("server", IPERF_PORT, iperf)
        # the name is routable from the client agent (one unmeasured flow to the iperf3 server)
        self.app("client", "connect", "--name", IPERF_NAME, "--socket", self.socket("client"), "--count", "0",
                 "--wait", "30", "--connect-only", timeout=60)  # fmt: skip
        iperf_pid = _pid(iperf)
        client_ha, server_ha = self.start_haproxies(HAPROXY_CLIENT_PORT, HAPROXY_SERVER_PORT, splice=False)
        client_sp, server_sp = self.start_haproxies(SPLICE_CLIENT_PORT, SPLICE_SERVER_PORT, splice=True)
        paths: dict[str, tuple[str, int, dict[str, list[int]]]] = {
            "direct": (self.server_ip, IPERF_PORT, {}),
            "serval": ("127.0.0.1", IPERF_PORT, {"client_relay": [self.pid("client")],
                                                 "server_relay": [self.pid("server")]}),
            "haproxy": ("127.0.0.1", HAPROXY_CLIENT_PORT, {"client_relay": [_pid(client_ha)],
                                                          "server_relay": [_pid(server_ha)]}),
            "haproxy_splice": ("127.0.0.1", SPLICE_CLIENT_PORT, {"client_relay": [_pid(client_sp)],
                                                                "server_relay": [_pid(server_sp)]}),
        }  # fmt: skip
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
        try:
            for round_ in range(s.iperf_rounds):
                for name, (ip, port, relays) in paths.items():
                    progress(f"throughput: {name}, iperf3 -t {s.iperf_seconds}, round {round_ + 1}")
                    runs[name].append(self.iperf(ip, port, {**relays, "iperf3_server": [iperf_pid]}))
        finally:
            for child in (client_ha, server_ha, client_sp, server_sp, iperf):
                child.stop()
        results: dict[str, Any] = {name: combine_runs(r) for name, r in runs.items()}
        results["nproc"] = machine_info()["nproc"]
        return results

    def start_haproxies(
        self, client_port: int, server_port: int, splice: bool
    ) -> tuple[ChildProcess, ChildProcess]:
        """haproxy (TCP mode) in `client` on 127.0.0.1:`client_port` -> haproxy in `server` on its lan
        address:`server_port` -> iperf3; `splice` lets both relay with splice(2) (kernel zero-copy)."""
        hops = {
            "client": (f"127.0.0.1:{client_port}", f"{self.server_ip}:{server_port}"),
            "server": (f"{self.server_ip}:{server_port}", f"127.0.0.1:{IPERF_PORT}"),
        }
        children = []
        for host in ("server", "client"):
            bind, target = hops[host]
            cfg = self.run_dir / f"haproxy-{host}{'-splice' if splice else ''}.cfg"
            cfg.write_text(haproxy_config(bind, target, splice))
            child = self.lab.spawn(host, ["haproxy", "-db", "-f", str(cfg)], name="haproxy")
            self.wait_listening(host, int(bind.rpartition(":")[2]), child)
            children.append(child)
        return children[1], children[0]

    def iperf(self, ip: str, port: int, pids: dict[str, list[int]]) -> dict[str, Any]:
        seconds = self.settings.iperf_seconds
        argv = ["iperf3", "-c", ip, "-p", str(port), "-t", str(seconds), "-J", "--connect-timeout", "5000"]
        meter = CpuMeter(pids)
        before, started = meter.sample(), time.monotonic()
        out = self.lab.run("client", argv, timeout=seconds + 30)
        after, elapsed = meter.sample(), time.monotonic() - started
        try:
            doc = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(
                f"iperf3 to {ip}:{port}: no JSON ({out.returncode}): {out.stderr[-1000:]}"
            ) from None
        result: dict[str, Any] = dict(iperf_summary(doc))
        result["busy_cores"] = CpuMeter.busy_cores(before, after, elapsed)
        result["wall_s"] = elapsed
        return result

    # ---- 2. connection set-up ------------------------------------------------------------------

    def setup(self) -> list[dict[str, Any]]:
        s = self.settings
        seconds = "900"
        server = self.lab.spawn(
            "server", [*APPS, "serve", SETUP_NAME, "--socket", self.socket("server"), "--seconds", seconds],
            name="setup-serve",
        )  # fmt: skip
        tcp = self.lab.spawn(
            "server", [*APPS, "tcp-serve", "--listen", self.server_ip, "--port", str(TCP_SERVER_PORT),
                       "--seconds", seconds],
            name="setup-tcp",
        )  # fmt: skip
        self.wait_listening("server", TCP_SERVER_PORT, tcp)
        paths = {
            "serval": ["--name", SETUP_NAME, "--socket", self.socket("client")],
            "direct": ["--direct", f"{self.server_ip}:{TCP_SERVER_PORT}"],
        }
        runs = []
        try:
            for concurrency in (1, s.concurrency):
                for path, target in paths.items():
                    progress(f"set-up: {s.connections} connections, {path}, {concurrency} at a time")
                    out = self.app(
                        "client", "connect", *target, "--count", str(s.connections),
                        "--concurrency", str(concurrency), "--wait", "30", timeout=180,
                    )  # fmt: skip
                    runs.append(
                        {
                            "path": path,
                            "concurrency": concurrency,
                            "connections": s.connections,
                            "failed": out["failed"],
                            "errors": out["errors"],
                            "latency": latency_summary_ms(out["samples_ns"]),
                            "elapsed_s": out["elapsed_s"],
                            "flows_per_s": len(out["samples_ns"]) / out["elapsed_s"],
                        }
                    )
        finally:
            server.stop()
            tcp.stop()
        return runs

    # ---- 3. migration --------------------------------------------------------------------------

    def migration(self) -> dict[str, Any]:
        s, lab = self.settings, self.lab
        transfer_s = s.migration_lead_s + s.migrations * (s.migration_spacing_s + s.address_poll_s) + 1.0
        out = self.run_dir / "sink.json"
        sink = lab.spawn(
            "server", [*APPS, "sink", MIGRATION_NAME, "--socket", self.socket("server"),
                       "--seconds", str(transfer_s + 60), "--out", str(out)],
            name="migration-sink",
        )  # fmt: skip
        _wait_log(sink, "listening", 20)
        # the client agent must know the name before the sender connects
        sender = lab.spawn(
            "client", [*APPS, "pace", MIGRATION_NAME, "--socket", self.socket("client"),
                       "--seconds", str(transfer_s), "--chunk", str(s.chunk), "--pace-ms", f"{s.pace_ms:g}"],
            name="migration-pace",
        )  # fmt: skip
        _wait_log(sender, "connected", 30)
        progress(
            f"migration: transfer running; {s.migrations} address changes ~{s.migration_spacing_s:g} s apart"
        )
        time.sleep(s.migration_lead_s)
        old = self.server_ip
        changes: list[dict[str, Any]] = []
        for i in range(s.migrations):
            new = old.rsplit(".", 1)[0] + f".{200 + i}"  # same network, an address nobody has
            lab.add_address("server", "lan", new)
            change_ns = time.monotonic_ns()
            lab.remove_address("server", "lan", old)
            changes.append(
                {"old": old, "new": new, "change_ns": change_ns, "removed_ns": time.monotonic_ns()}
            )
            old = new
            time.sleep(s.migration_spacing_s + random.uniform(0, s.address_poll_s))
        self.server_ip = old
        for child in (sender, sink):
            assert child.proc is not None
            child.proc.wait(timeout=60)
            if child.proc.returncode != 0:
                raise RuntimeError(f"{child.name} failed:\n{child.log_tail()}")
        arrivals = json.loads(out.read_text())["arrivals"]
        times = [t for t, _ in arrivals]
        sent = json.loads(sender.log_path.read_text().strip().splitlines()[-1])["sent"]
        threshold_ns = int(s.stall_threshold_ms * 1e6)
        for i, change in enumerate(changes):
            end = (
                changes[i + 1]["change_ns"]
                if i + 1 < len(changes)
                else change["change_ns"] + int(s.migration_spacing_s * 1e9)
            )
            within_ns = int(s.stall_start_within_ms * 1e6)
            change.update(stall_after(times, change["change_ns"], end, threshold_ns, within_ns))
            change["ip_addr_del_ms"] = (change["removed_ns"] - change["change_ns"]) / 1e6
        return {
            "changes": changes,
            "bytes_sent": sent,
            "bytes_received": sum(n for _, n in arrivals),
            "reads": len(arrivals),
            "chunk": s.chunk,
            "pace_ms": s.pace_ms,
            "stall_threshold_ms": s.stall_threshold_ms,
            "stall_start_within_ms": s.stall_start_within_ms,
        }

    # ---- 4. memory -----------------------------------------------------------------------------

    def memory(self, rss_start_kb: int) -> dict[str, Any]:
        s = self.settings
        before_kb = proc_status_kb(self.pid("client"))["VmRSS"]
        progress(
            f"memory: registering {s.entries:,} SAL-capable instances over {s.entry_services:,} services"
        )
        load = self.app(
            "registry1", "load", "--registry", self.registry, "--instances", str(s.entries),
            "--services", str(s.entry_services), timeout=600,
        )  # fmt: skip
        progress(f"memory: loaded in {load['seconds']:.1f} s; waiting for the client agent's table")
        started = time.monotonic()
        waited = self.app(
            "client", "wait-metric", "--port", str(METRICS_PORT), "--metric", "serval_agent_applied_revision",
            "--at-least", str(load["max_revision"]), "--timeout", "300", timeout=330,
        )  # fmt: skip
        catch_up = time.monotonic() - started
        time.sleep(2.0)  # let the agent finish what it was doing
        client_kb = proc_status_kb(self.pid("client"))
        server_kb = proc_status_kb(self.pid("server"))
        metrics = waited["metrics"]
        return {
            "entries": s.entries,
            "services": s.entry_services,
            "load": load,
            "catch_up_s": catch_up,
            "rss_start_mb": rss_start_kb / 1024,
            "rss_before_mb": before_kb / 1024,
            "rss_loaded_mb": client_kb["VmRSS"] / 1024,
            "rss_peak_mb": client_kb["VmHWM"] / 1024,
            "server_rss_loaded_mb": server_kb["VmRSS"] / 1024,
            "table_rules": metrics.get("serval_agent_table_rules", 0.0),
            "table_generation": metrics.get("serval_agent_table_generation", 0.0),
            "applied_revision": metrics.get("serval_agent_applied_revision", 0.0),
        }


def run_all(settings: Settings, run_dir: Path, phases: tuple[str, ...] = PHASES) -> dict[str, Any]:
    """Build the lab, run `phases` (in `PHASES` order), remove the lab; every figure."""
    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": settings.mode,
        "phases": list(phases),
        "settings": asdict(settings),
        "machine": machine_info(),
        "address_poll_s": settings.address_poll_s,
        "iperf3_version": _version(["iperf3", "--version"]),
        "haproxy_version": _version(["haproxy", "-v"]),
    }
    bed = Testbed(bench_spec(settings), run_dir)
    progress(
        f"starting the test bed: etcd, a registry, two agents (run {bed.run_id}, logs in {run_dir / 'logs'})"
    )
    with bed:
        bench = Bench(bed, settings, run_dir)
        rss_start_kb = proc_status_kb(bench.pid("client"))["VmRSS"]
        if "throughput" in phases:
            results["throughput"] = bench.throughput()
        if "setup" in phases:
            results["setup"] = bench.setup()
        if "migration" in phases:
            results["migration"] = bench.migration()
        if "memory" in phases:
            results["memory"] = bench.memory(rss_start_kb)
        progress("removing the lab")
    results["elapsed_s"] = time.monotonic() - started
    return results


def bench_spec(settings: Settings) -> TestbedSpec:
    """The bench's hosts, from the test bed: etcd and a registry, the agents `server` (exposing
    iperf3's port by name) and `client` (an upstream port to that name)."""
    return TestbedSpec(
        etcd_members=1,
        registries=1,
        dns=False,
        dashboard=False,
        agents=(
            AgentSpec("server", args=("--expose", f"{IPERF_NAME}=127.0.0.1:{IPERF_PORT}")),
            AgentSpec("client", args=("--upstream", f"127.0.0.1:{IPERF_PORT}={IPERF_NAME}")),
        ),
        lease_ttl=10,
        address_poll=settings.address_poll_s,
    )


def haproxy_config(bind: str, target: str, splice: bool = False) -> str:
    """A TCP-mode haproxy forwarding every connection on `bind` to `target` (no checks, no logs);
    with `splice`, it moves the bytes with splice(2) in both directions (``option splice-auto``)."""
    return (
        "global\n"
        "    maxconn 4096\n"
        "defaults\n"
        "    mode tcp\n" + ("    option splice-auto\n" if splice else "") + "    timeout connect 5s\n"
        "    timeout client 120s\n"
        "    timeout server 120s\n"
        "listen relay\n"
        f"    bind {bind}\n"
        f"    server next {target}\n"
    )


def _pid(child: ChildProcess) -> int:
    assert child.proc is not None
    return child.proc.pid


def _wait_log(child: ChildProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in (child.log_path.read_text() if child.log_path.exists() else ""):
        if time.monotonic() > deadline or not child.running:
            raise RuntimeError(f"{child.name} did not print {text!r}:\n{child.log_tail()}")
        time.sleep(0.05)


def _version(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "unknown"


if __name__ == "__main__":
    sys.exit(main())
