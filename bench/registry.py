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
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from bench.common import FULL, HOST, QUICK, RegistryProcess, Settings, etcd_pid, machine_info, progress
from bench.memory import measure_memory
from bench.propagation import measure_propagation
from bench.report import render, summary_rows
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
    _stop_on_signals()
    args.bench_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="registry-", dir=args.bench_dir))
    try:
        results = asyncio.run(run_all(settings, run_dir))
    except KeyboardInterrupt:
        _tidy(run_dir, args.keep, failed=True)
        print(f"bench: interrupted; everything started was stopped (logs in {run_dir})", file=sys.stderr)
        return 130
    except Exception as e:
        _tidy(run_dir, args.keep, failed=True)
        print(f"bench: failed: {type(e).__name__}: {e}\nlogs in {run_dir}", file=sys.stderr)
        return 1
    _tidy(run_dir, args.keep, failed=False)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nJSON: {args.json}")
    missed = [r.metric for r in summary_rows(results) if r.passed is False]
    return 1 if args.strict and missed else 0


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


def _tidy(run_dir: Path, keep: bool, failed: bool) -> None:
    """Remove the run folder; after a failure keep the logs (etcd's data goes unless `keep`)."""
    if keep:
        return
    if not failed:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for data in run_dir.glob("etcd/*/data"):
        shutil.rmtree(data, ignore_errors=True)


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt once; later ones are ignored while cleaning up."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    sys.exit(main())
