"""`serval up`: the complete local cluster on loopback, in the foreground.

Starts, in order: a single-node etcd (data in the state folder, kept across
runs), one registry replica, the DNS bridge (`serval dns`, UDP+TCP on a loopback
port) and the ops dashboard (`serval dashboard`, HTTP on a loopback port, with a
fresh random admin token written to `<state>/dashboard-tokens`, mode 0600); later
issues add the host agent here. It prints where each listens and the dashboard's
admin token, then waits. Ctrl-C (SIGINT) or SIGTERM stops every process it started,
in reverse order, and leaves nothing running; if any component dies, the others
are stopped and `up` exits 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

# grpc, its health service, etcd and the child-process helpers are imported by
# the functions that use them: `serval agent` and the registry commands share
# this module's parser and should not load them.


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="run the complete local cluster in the foreground (Ctrl-C stops it)")
    p.add_argument(
        "--state-dir", type=Path, default=Path(".state"), help="state folder (default %(default)s)"
    )
    p.add_argument("--host", default="127.0.0.1", help="loopback address to use (default %(default)s)")
    p.add_argument("--etcd-port", type=int, default=23790, help="etcd client port (default %(default)s)")
    p.add_argument(
        "--etcd-peer-port", type=int, default=None, help="etcd peer port (default: client port + 1)"
    )
    p.add_argument("--registry-port", type=int, default=7070)
    p.add_argument(
        "--dns-port", type=int, default=5353, help="DNS bridge port, UDP+TCP (default %(default)s)"
    )
    p.add_argument(
        "--dashboard-port", type=int, default=8080, help="dashboard HTTP port (default %(default)s)"
    )
    p.set_defaults(sync_handler=run_up)


def registry_serving(target: str) -> bool:
    """True when the registry at `target` reports SERVING on the standard health service."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def dns_serving(host: str, port: int, zone: str = "svc.serval.") -> bool:
    """True when a DNS server on `host`:`port` answers the SOA query of `zone` over UDP."""
    import socket

    qname = b"".join(bytes([len(label)]) + label.encode() for label in zone.rstrip(".").split(".")) + b"\0"
    query = b"\x53\x56\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x06\x00\x01"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.sendto(query, (host, port))
            reply = sock.recv(4096)
        except OSError:
            return False
    return reply[:2] == query[:2] and reply[3] & 0x0F == 0


def http_serving(url: str) -> bool:
    """True when `url` answers an HTTP GET with any status (the server is listening)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def run_up(args: argparse.Namespace) -> int:
    from registry.processes import ChildProcess
    from registry.raft.local_etcd import LocalEtcdCluster

    state: Path = args.state_dir.resolve()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    etcd = LocalEtcdCluster(
        state / "etcd",
        size=1,
        host=args.host,
        client_ports=[args.etcd_port],
        peer_ports=[args.etcd_peer_port or args.etcd_port + 1],
    )
    registry_target = f"{args.host}:{args.registry_port}"
    registry = ChildProcess(
        "registry",
        [
            sys.executable, "-m", "deploy.cli", "registry",
            "--etcd", ",".join(etcd.endpoints), "--listen", registry_target, "--replica-id", "local-1",
            "--etcd-max-txn-ops", str(etcd.settings.max_txn_ops),
        ],
        state / "logs" / "registry.log",
    )  # fmt: skip
    dns = ChildProcess(
        "dns",
        [
            sys.executable, "-m", "deploy.cli", "dns",
            "--registry", registry_target, "--listen", f"{args.host}:{args.dns_port}",
        ],
        state / "logs" / "dns.log",
    )  # fmt: skip
    from dashboard.auth import write_admin_token

    token_file = state / "dashboard-tokens"
    admin_token = write_admin_token(token_file)
    dashboard_url = f"http://{args.host}:{args.dashboard_port}"
    dashboard = ChildProcess(
        "dashboard",
        [
            sys.executable, "-m", "deploy.cli", "dashboard",
            "--registry", registry_target, "--listen", f"{args.host}:{args.dashboard_port}",
            "--token-file", str(token_file), "--audit-file", str(state / "logs" / "dashboard-audit.jsonl"),
        ],
        state / "logs" / "dashboard.log",
    )  # fmt: skip
    try:
        print(f"serval up: starting etcd on {etcd.endpoints[0]} (data in {state / 'etcd'})", flush=True)
        etcd.start(timeout=30)
        print(f"serval up: starting the registry on {registry_target}", flush=True)
        registry.start()
        registry.wait_until(lambda: registry_serving(registry_target), timeout=30)
        print(f"serval up: starting the DNS bridge on {args.host}:{args.dns_port} (UDP+TCP)", flush=True)
        dns.start()
        dns.wait_until(lambda: dns_serving(args.host, args.dns_port), timeout=30)
        print(f"serval up: starting the dashboard on {dashboard_url}", flush=True)
        dashboard.start()
        dashboard.wait_until(lambda: http_serving(f"{dashboard_url}/healthz"), timeout=30)
        dns_at = f"{args.host} -p {args.dns_port}"
        _print_banner(
            etcd.endpoints[0], registry_target, dns_at, state, dashboard_url, admin_token, token_file
        )
        while not stop.wait(0.5):
            for child in (registry, dns, dashboard):
                if not child.running:
                    print(f"serval up: the {child.name} exited:\n{child.log_tail()}", file=sys.stderr)
                    return 1
        return 0
    except RuntimeError as e:
        print(f"serval up: {e}", file=sys.stderr)
        return 1
    finally:
        print("serval up: stopping", flush=True)
        dashboard.stop()
        dns.stop()
        registry.stop()
        etcd.stop()
        print("serval up: stopped; nothing left running", flush=True)


def _print_banner(
    etcd: str, registry: str, dns: str, state: Path, dashboard: str, token: str, token_file: Path
) -> None:
    print(
        f"""
Serval local cluster is up.
  etcd      {etcd}
  registry  {registry}   (gRPC: serval.registry.v1.Registry, health, reflection)
  dns       @{dns}   (zone svc.serval., UDP+TCP)
  dashboard {dashboard}   (log in with the admin token; API docs at {dashboard}/docs)
            admin token: {token}   (also in {token_file}, mode 0600)
  logs      {state / "logs"}

Try, in another terminal (with the virtual environment's bin/ on PATH):
  serval register payments.prod i-1 --address 127.0.0.1 --port 8080
  serval resolve payments.prod
  dig @{dns} payments.prod.svc.serval SRV
  serval watch
  serval status

Ctrl-C stops everything.
""",
        flush=True,
    )
