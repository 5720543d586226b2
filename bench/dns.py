"""`make bench-dns`: the DNS bridge against dnsmasq on the same names, and its freshness.

    python -m bench.dns [--quick] [--json PATH] [--keep] [--strict]

Starts its own single-node etcd, one registry replica and one `serval dns` process
(rate limit off), registers `names` services of one instance each, and writes the
same names to a hosts file served by dnsmasq (`--addn-hosts`, no upstream). Then:

- **throughput**: `dnsperf` with the same query file (every name once, type A, in a
  shuffled order, looped) and the same settings against each server, alternating
  servers for `rounds` rounds (the best round of each is reported, all are in the
  JSON): QPS, lost queries, and latency p50/p99 from dnsperf's per-query `-v` lines;
- **freshness**: `registrations` new services registered one at a time; for each, the
  time from the Register response to the first UDP answer that contains it, polling
  the bridge back to back (each poll waits for its reply).

Prints a table and writes JSON (default `.bench/dns.json`). Needs `dnsperf` and
`dnsmasq` on PATH (`make bench-dns-deps`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import HOST, RegistryProcess, machine_info, progress
from bench.report import Row, table
from bench.runner import run_benchmark
from bench.stats import percentile
from deploy.local_cluster import dns_serving
from registry.api.client import RegistryClient, keep_session_alive
from registry.model import Instance
from registry.processes import ChildProcess
from registry.raft.local_etcd import LocalEtcdCluster, free_ports

ZONE = "svc.serval"
QPS_RATIO_TARGET = 0.9
FRESHNESS_P99_TARGET_MS = 50.0


@dataclass(frozen=True)
class DnsSettings:
    mode: str
    names: int = 10_000
    duration_s: int = 10
    clients: int = 4  # dnsperf -c
    outstanding: int = 100  # dnsperf -q
    registrations: int = 1_000
    rounds: int = 2  # dnsperf rounds per server, alternating servers; the best is reported


FULL = DnsSettings("full")
QUICK = DnsSettings("quick", names=2_000, duration_s=3, registrations=100, rounds=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.dns", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run in under a minute")
    p.add_argument("--json", type=Path, default=Path(".bench/dns.json"), help="output (default %(default)s)")
    p.add_argument("--bench-dir", type=Path, default=Path(".bench"), help="where run folders go")
    p.add_argument("--keep", action="store_true", help="keep the run folder (etcd data, logs)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing: run `make bench-dns-deps`", file=sys.stderr)
            return 1
    return run_benchmark(args, "dns", lambda d: run(d, settings), render, summary_rows, ("etcd",))


def name_of(index: int) -> str:
    return f"svc-{index:05d}.bench"


def address_of(index: int) -> str:
    return f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"


def run(run_dir: Path, s: DnsSettings) -> dict[str, Any]:
    etcd = LocalEtcdCluster(run_dir / "etcd", size=1, host=HOST)
    etcd.start(timeout=30)
    try:
        with RegistryProcess("registry", etcd.endpoints, "/bench/dns", run_dir) as registry:
            return asyncio.run(_run(run_dir, s, registry.target))
    finally:
        etcd.stop()


async def _run(run_dir: Path, s: DnsSettings, registry: str) -> dict[str, Any]:
    client = RegistryClient([registry], timeout=10)
    lease = (await client.open_session(600)).lease_id
    alive = asyncio.create_task(keep_session_alive(client, lease, 5.0))
    try:
        progress(f"registering {s.names} services")
        await _register_all(client, lease, s.names)
        bridge_port, dnsmasq_port = free_ports(HOST, 2)
        bridge = ChildProcess(
            "dns",
            [
                sys.executable, "-m", "deploy.cli", "dns", "--registry", registry,
                "--listen", f"{HOST}:{bridge_port}", "--rate-limit", "0",
            ],
            run_dir / "dns.log",
        )  # fmt: skip
        hosts = run_dir / "hosts"
        hosts.write_text("".join(f"{address_of(i)} {name_of(i)}.{ZONE}\n" for i in range(s.names)))
        dnsmasq = ChildProcess(
            "dnsmasq",
            [
                "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
                f"--port={dnsmasq_port}", f"--listen-address={HOST}", "--bind-interfaces",
                "--user=root", "--pid-file=", f"--local=/{ZONE}/", "--cache-size=10000",
                "--dns-forward-max=1000",
            ],
            run_dir / "dnsmasq.log",
        )  # fmt: skip
        queries = run_dir / "queries.txt"
        order = list(range(s.names))
        random.Random(1).shuffle(order)
        queries.write_text("".join(f"{name_of(i)}.{ZONE} A\n" for i in order))
        bridge.start()
        dnsmasq.start()
        try:
            bridge.wait_until(lambda: dns_serving(HOST, bridge_port, ZONE + "."), timeout=30)
            last = f"{name_of(s.names - 1)}.{ZONE}."
            bridge.wait_until(lambda: _answers(bridge_port, last, 0.5), timeout=60)
            dnsmasq.wait_until(lambda: _answers(dnsmasq_port, last, 0.5), timeout=30)
            results: dict[str, Any] = {"settings": s.__dict__, "machine": machine_info()}
            servers = (("dnsmasq", dnsmasq_port), ("bridge", bridge_port))
            for _, port in servers:
                _warm_up(port, queries, s)  # the bridge prepares its answers on first use
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in servers}
            for rnd in range(s.rounds):  # alternated, so that a load change hits both alike
                for name, port in servers:
                    progress(f"round {rnd + 1}/{s.rounds}: dnsperf against {name}, 2 x {s.duration_s}s")
                    runs[name].append(_dnsperf(port, queries, s, s.duration_s))
            for name, _ in servers:  # each server's best round (highest QPS)
                results[name] = max(runs[name], key=lambda run: run["qps"] or 0.0)
            results["rounds"] = runs
            progress(f"freshness: {s.registrations} registrations")
            results["freshness"] = await _freshness(client, lease, bridge_port, s.registrations)
            return results
        finally:
            dnsmasq.stop()
            bridge.stop()
    finally:
        alive.cancel()
        await asyncio.gather(alive, return_exceptions=True)
        await client.close()


async def _register_all(client: RegistryClient, lease: int, count: int) -> None:
    stream = client.registration_stream()
    try:
        for start in range(0, count, 500):
            batch = [
                stream.register(Instance(name_of(i), "i-1", (address_of(i),), 8080), lease_id=lease)
                for i in range(start, min(count, start + 500))
            ]
            await asyncio.gather(*batch)
    finally:
        await stream.close()


def _query(name: str, qtype: int = 1, qid: int = 0x5356) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def _answers(port: int, name: str, timeout: float) -> bool:
    """True when the server at `port` answers `name` A with at least one record."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(_query(name), (HOST, port))
            reply = sock.recv(4096)
        except OSError:
            return False
    return len(reply) >= 12 and reply[3] & 0x0F == 0 and reply[6:8] != b"\0\0"


_PERF = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "avg_latency_s": re.compile(r"Average Latency \(s\):\s+([\d.]+)"),
}
_LATENCY_LINE = re.compile(rb"^> \S+ .* ([\d.]+)$", re.MULTILINE)


def _warm_up(port: int, queries: Path, s: DnsSettings) -> None:
    argv = ["dnsperf", "-s", HOST, "-p", str(port), "-d", str(queries), "-n", "1", "-q", str(s.outstanding)]
    subprocess.run(argv, capture_output=True, check=True, timeout=120)


def _dnsperf(port: int, queries: Path, s: DnsSettings, seconds: int) -> dict[str, Any]:
    """Two runs: one plain (QPS, lost), one with `-v` for per-query latencies (p50/p99) —
    printing every query slows dnsperf itself, so its QPS is not the server's."""
    argv = [
        "dnsperf", "-s", HOST, "-p", str(port), "-d", str(queries), "-l", str(seconds),
        "-c", str(s.clients), "-q", str(s.outstanding),
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, check=True, timeout=seconds + 60).stdout
    text = out[-4000:].decode(errors="replace")
    result: dict[str, Any] = {}
    for key, pattern in _PERF.items():
        m = pattern.search(text)
        result[key] = float(m.group(1)) if m else None
    out = subprocess.run([*argv, "-v"], capture_output=True, check=True, timeout=seconds + 60).stdout
    lat = sorted(int(float(m.group(1)) * 1e6) for m in _LATENCY_LINE.finditer(out))
    result["p50_ms"] = percentile(lat, 50) / 1000 if lat else None
    result["p99_ms"] = percentile(lat, 99) / 1000 if lat else None
    m = _PERF["lost"].search(out[-4000:].decode(errors="replace"))
    result["lost_verbose_run"] = float(m.group(1)) if m else None
    result["argv"] = " ".join(argv[:1] + argv[5:])
    return result


async def _freshness(client: RegistryClient, lease: int, port: int, count: int) -> dict[str, Any]:
    """Register `count` new services one by one; time Register ack → first answer with it."""
    samples: list[int] = []
    missing = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((HOST, port))
        sock.settimeout(0.2)
        for n in range(count):
            name = f"fresh-{n:05d}.bench"
            await client.register(Instance(name, "f-1", (address_of(n),), 8080), lease_id=lease)
            acked = time.monotonic_ns()
            query = _query(f"{name}.{ZONE}", qid=n & 0xFFFF)
            while True:
                sock.send(query)
                try:
                    reply = sock.recv(4096)
                except TimeoutError:
                    reply = b""
                if reply[:2] == query[:2] and reply[3] & 0x0F == 0 and reply[6:8] != b"\0\0":
                    samples.append(time.monotonic_ns() - acked)
                    break
                if time.monotonic_ns() - acked > 5_000_000_000:
                    missing += 1
                    break
    samples.sort()
    return {
        "registrations": count,
        "missing": missing,
        "p50_ms": percentile(samples, 50) / 1e6 if samples else None,
        "p99_ms": percentile(samples, 99) / 1e6 if samples else None,
        "max_ms": samples[-1] / 1e6 if samples else None,
    }


def summary_rows(r: dict[str, Any]) -> list[Row]:
    b, d, f = r["bridge"], r["dnsmasq"], r["freshness"]
    ratio = (b["qps"] or 0) / d["qps"] if d["qps"] else 0.0
    p99 = f["p99_ms"]
    return [
        Row("bridge QPS / dnsmasq QPS", f"{ratio:.2f}", f">= {QPS_RATIO_TARGET}", ratio >= QPS_RATIO_TARGET),
        Row("bridge lost queries", f"{b['lost']:.0f}", "0", b["lost"] == 0),
        Row("dnsmasq lost queries", f"{d['lost']:.0f}"),
        Row(
            "freshness p99 (ack -> DNS answer)",
            "-" if p99 is None else f"{p99:.1f} ms",
            f"<= {FRESHNESS_P99_TARGET_MS:.0f} ms",
            p99 is not None and p99 <= FRESHNESS_P99_TARGET_MS and f["missing"] == 0,
        ),
    ]


def render(r: dict[str, Any]) -> str:
    s = r["settings"]
    perf = table(
        [
            [
                name,
                f"{r[name]['qps']:.0f}",
                f"{r[name]['completed']:.0f}",
                f"{r[name]['lost']:.0f}",
                f"{r[name]['p50_ms']:.3f}",
                f"{r[name]['p99_ms']:.3f}",
            ]
            for name in ("dnsmasq", "bridge")
        ],
        ["SERVER", "QPS", "COMPLETED", "LOST", "P50 MS", "P99 MS"],
    )
    f = r["freshness"]
    fresh = table(
        [
            [
                f["registrations"],
                f["missing"],
                f"{f['p50_ms']:.2f}",
                f"{f['p99_ms']:.2f}",
                f"{f['max_ms']:.2f}",
            ]
        ],
        ["REGISTRATIONS", "MISSING", "P50 MS", "P99 MS", "MAX MS"],
    )
    summary = table(
        [[row.metric, row.value, row.target, row.result] for row in summary_rows(r)],
        ["METRIC", "VALUE", "TARGET", "RESULT"],
    )
    head = (
        f"DNS bench ({s['mode']}): {s['names']} names, type A; dnsperf -l {s['duration_s']} "
        f"-c {s['clients']} -q {s['outstanding']}, same query file for both servers"
    )
    return f"{head}\n\n{perf}\n\nfreshness\n{fresh}\n\n{summary}"


if __name__ == "__main__":
    sys.exit(main())
