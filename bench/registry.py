"""`make bench-registry`: throughput, propagation and memory of the registry, in one run.

    python -m bench.registry [--quick] [--json PATH] [--keep] [--strict]

Starts its own single-node etcd (data in a fresh ``.bench/registry-*``
folder) and, per phase, one registry replica process on a free loopback
port, each phase under its own etcd key prefix. Runs the phases in order
(`bench.throughput`, `bench.propagation`, `bench.memory`), prints the
tables and writes every figure as JSON (default ``.bench/registry.json``).

Everything it starts is stopped before it exits, also on error, Ctrl-C or
SIGTERM (a second signal during clean-up is ignored). The run folder is
removed after a successful run; after a failed or interrupted one only the
replicas' and etcd's logs are kept. ``--keep`` keeps everything.

Exit status: 0 when the run completed (``--strict``: and every target was
met), 1 on failure or a missed target under ``--strict``, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import FULL, HOST, QUICK, RegistryProcess, Settings, etcd_pid, machine_info, progress
from bench.memory import measure_memory
from bench.propagation import measure_propagation
from bench.report import render, summary_rows
from bench.runner import run_benchmark
from bench.throughput import measure_floor_throughput, measure_throughput
from registry.api.client import RegistryClient
from registry.raft.local_etcd import LocalEtcdCluster


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.registry", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run in under a minute")
    p.add_argument(
        "--json", type=Path, default=Path(".bench/registry.json"), help="output (default %(default)s)"
    )
    p.add_argument(
        "--bench-dir", type=Path, default=Path(".bench"), help="where run folders go (default %(default)s)"
    )
    p.add_argument("--keep", action="store_true", help="keep the run folder (etcd data, logs)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    return run_benchmark(
        args,
        "registry",
        lambda run_dir: asyncio.run(run_all(settings, run_dir)),
        render,
        summary_rows,
        data_globs=["etcd/*/data"],
    )


async def run_all(settings: Settings, run_dir: Path) -> dict[str, Any]:
    """Start etcd, run each phase against its own replica, stop everything; all figures."""
    started = time.monotonic()
    results: dict[str, Any] = {"mode": settings.mode, "settings": asdict(settings), "machine": machine_info()}
    etcd = LocalEtcdCluster(run_dir / "etcd", size=1, host=HOST)
    logs = run_dir / "logs"
    try:
        progress(f"starting etcd on {etcd.endpoints[0]} (data in {run_dir})")
        etcd.start(timeout=30)
        with RegistryProcess("bench-load", etcd.endpoints, "/bench/load", logs) as replica:
            results["etcd_version"] = await etcd_version(replica.target)
            pids = {"replica": [replica.pid], "etcd": [etcd_pid()]}
            results["throughput"] = await measure_throughput(
                settings, etcd.endpoints[0], replica.target, pids
            )
        with RegistryProcess("bench-fanout", etcd.endpoints, "/bench/fanout", logs) as replica:
            pids = {"replica": [replica.pid], "etcd": [etcd_pid()]}
            results["propagation"] = await measure_propagation(settings, replica.target, pids)
        with RegistryProcess.echo("bench-echo", logs) as echo:
            pids = {"replica": [echo.pid], "etcd": [etcd_pid()]}
            results["throughput"]["bare_grpc_stream"] = await measure_floor_throughput(
                settings, echo.target, pids
            )
            results["propagation_floor"] = await measure_propagation(settings, echo.target, pids)
        with RegistryProcess("bench-memory", etcd.endpoints, "/bench/memory", logs) as replica:
            results["memory"] = await measure_memory(settings, replica)
    finally:
        progress("stopping etcd")
        etcd.stop()
    results["elapsed_s"] = time.monotonic() - started
    return results


async def etcd_version(target: str) -> str:
    """The etcd server version, as the replica's ClusterStatus reports it."""
    client = RegistryClient([target])
    try:
        status = await client.cluster_status()
    finally:
        await client.close()
    return ",".join(sorted({m.version for m in status.members})) or "unknown"


if __name__ == "__main__":
    sys.exit(main())
