"""`serval` sub-commands that talk to the registry: registry, register, deregister,
drain, weight, resolve, list, watch, status.

Each command prints a table for people, or JSON with `--json`. Registry
targets come from `--registry` (comma-separated host:port list, default
$SERVAL_REGISTRY or 127.0.0.1:7070); calls fail over between them.
Exit codes: 0 success, 1 the registry refused (message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from registry.api.client import Mirror, RegistryClient, keep_session_alive
from registry.api.rpc import RpcError
from registry.api.v1 import registry_pb2 as pb
from registry.model import DEFAULT_TTL_SECONDS, DEFAULT_WEIGHT, Instance

DEFAULT_REGISTRY = "127.0.0.1:7070"
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the registry sub-commands to the `serval` parser."""
    p = sub.add_parser("registry", help="run a registry replica against etcd")
    p.add_argument("--etcd", default=os.environ.get("SERVAL_ETCD", "127.0.0.1:2379"), help="host:port[,...]")
    p.add_argument("--listen", default="127.0.0.1:7070", help="gRPC listen address (default %(default)s)")
    p.add_argument("--prefix", default="/serval", help="etcd key prefix (default %(default)s)")
    p.add_argument("--replica-id", default="", help="name shown to subscribers (default host:port)")
    p.add_argument(
        "--advertise",
        default="",
        metavar="HOST:PORT",
        help="address other replicas and operators see for this one (default: the listen address)",
    )
    p.add_argument(
        "--history", type=int, default=100_000, help="deltas kept for resume (default %(default)s)"
    )
    p.add_argument(
        "--max-queued", type=int, default=4096, help="messages queued per subscriber before cut-off"
    )
    p.add_argument(
        "--etcd-max-txn-ops",
        type=int,
        default=128,
        help="largest etcd transaction to send; at most the servers' --max-txn-ops (default %(default)s)",
    )
    p.set_defaults(handler=run_registry)

    p = _client_parser(sub, "register", "register an instance and keep it alive (Ctrl-C deregisters)")
    p.add_argument("service")
    p.add_argument("instance_id")
    p.add_argument("--address", "-a", action="append", required=True, help="IPv4/IPv6 address (repeatable)")
    p.add_argument("--port", "-p", type=int, required=True)
    p.add_argument("--weight", type=int, default=DEFAULT_WEIGHT)
    p.add_argument("--tier", type=int, default=0)
    p.add_argument("--region", default="")
    p.add_argument("--zone", default="")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ttl", type=int, default=DEFAULT_TTL_SECONDS, help="lease TTL in seconds")
    p.add_argument("--lease", type=lambda s: int(s, 0), default=0, help="existing lease (session) ID")
    p.add_argument("--replace", action="store_true", help="take over an instance held by another lease")
    p.add_argument(
        "--detach", action="store_true", help="exit at once; the instance lives until its lease ends"
    )
    p.set_defaults(handler=cmd_register)

    p = _client_parser(sub, "deregister", "remove an instance")
    p.add_argument("service")
    p.add_argument("instance_id")
    p.set_defaults(handler=cmd_deregister)

    p = _client_parser(sub, "drain", "drain an instance (weight 0) or undrain it")
    p.add_argument("service")
    p.add_argument("instance_id")
    p.add_argument("--undo", action="store_true", help="undrain: restore the weight")
    p.set_defaults(handler=cmd_drain)

    p = _client_parser(sub, "weight", "set an instance's weight (1..10000)")
    p.add_argument("service")
    p.add_argument("instance_id")
    p.add_argument("weight", type=int)
    p.set_defaults(handler=cmd_weight)

    p = _client_parser(sub, "resolve", "list a service's instances, best tier first")
    p.add_argument("service")
    p.add_argument("--lease-time", action="store_true", help="also show each lease's seconds left")
    p.set_defaults(handler=cmd_resolve)

    p = _client_parser(sub, "list", "list services")
    p.add_argument("--suffix", default="")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(handler=cmd_list)

    p = _client_parser(sub, "watch", "follow the registry's change stream")
    p.add_argument("--from-revision", type=int, default=0)
    p.add_argument("--suffix", default="")
    p.add_argument("--count", type=int, default=0, help="stop after this many messages (0: never)")
    p.set_defaults(handler=cmd_watch)

    p = _client_parser(sub, "status", "etcd cluster, replica and subscriber status")
    p.set_defaults(handler=cmd_status)


def _client_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    p.add_argument(
        "--registry",
        default=os.environ.get("SERVAL_REGISTRY", DEFAULT_REGISTRY),
        help="registry replicas, host:port[,...] (default $SERVAL_REGISTRY or %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--timeout", type=float, default=5.0)
    return p


def _client(args: argparse.Namespace) -> RegistryClient:
    return RegistryClient([t.strip() for t in args.registry.split(",") if t.strip()], timeout=args.timeout)


def _as_json(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


# ---- commands ------------------------------------------------------------------


async def run_registry(args: argparse.Namespace) -> int:
    # Imported here: the server side (etcd store, fan-out) is not needed by the
    # other commands, nor by `serval agent`, which shares this parser.
    from registry.api.server import Replica, ReplicaConfig

    config = ReplicaConfig(
        etcd_endpoints=[e.strip() for e in args.etcd.split(",") if e.strip()],
        listen=args.listen,
        prefix=args.prefix,
        replica_id=args.replica_id,
        advertise=args.advertise,
        history_size=args.history,
        max_queued=args.max_queued,
        etcd_max_txn_ops=args.etcd_max_txn_ops,
    )
    replica = Replica(config)
    port = await replica.start()
    print(f"serval registry {replica.replica_id} listening on port {port}, etcd {args.etcd}", flush=True)
    await _wait_for_signal()
    await replica.stop(grace=2.0)
    return 0


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def cmd_register(args: argparse.Namespace) -> int:
    meta = dict(_key_value(m) for m in args.meta)
    inst = Instance(
        service=args.service,
        instance_id=args.instance_id,
        addresses=tuple(args.address),
        port=args.port,
        weight=args.weight,
        tier=args.tier,
        region=args.region,
        zone=args.zone,
        metadata=meta,
        ttl_seconds=args.ttl,
    )
    client = _client(args)
    resp = await client.register(inst, lease_id=args.lease, replace=args.replace)
    if args.json:
        _print_json(_as_json(resp))
    else:
        where = f"on lease {resp.lease_id:#x} at revision {resp.revision}"
        print(f"registered {args.instance_id} of {args.service} {where}")
    if args.detach:
        return 0
    print("keeping the registration alive; Ctrl-C deregisters", file=sys.stderr, flush=True)
    keeper = asyncio.create_task(keep_session_alive(client, resp.lease_id, max(1.0, resp.ttl_seconds / 3)))
    waiter = asyncio.create_task(_wait_for_signal())
    await asyncio.wait({keeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError, RpcError):
        await keeper
    if waiter.done():
        with contextlib.suppress(RpcError):
            await client.deregister(args.service, args.instance_id)
            print(f"deregistered {args.instance_id} of {args.service}", file=sys.stderr)
        return 0
    waiter.cancel()
    print("the lease expired; the registration is gone", file=sys.stderr)
    return 1


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--meta {text!r}: expected KEY=VALUE")
    return key, value


async def cmd_deregister(args: argparse.Namespace) -> int:
    revision = await _client(args).deregister(args.service, args.instance_id)
    _print_json({"revision": revision}) if args.json else print(f"deregistered at revision {revision}")
    return 0


async def cmd_drain(args: argparse.Namespace) -> int:
    resp = await _client(args).drain(args.service, args.instance_id, drain=not args.undo)
    return _print_update(args, resp)


async def cmd_weight(args: argparse.Namespace) -> int:
    resp = await _client(args).set_weight(args.service, args.instance_id, args.weight)
    return _print_update(args, resp)


def _print_update(args: argparse.Namespace, resp: pb.UpdateInstanceResponse) -> int:
    if args.json:
        _print_json(_as_json(resp))
    else:
        i = resp.instance
        state = "drained" if i.drained else "serving"
        print(f"{i.instance_id} of {i.service}: weight {i.weight} ({state}) at revision {resp.revision}")
    return 0


async def cmd_resolve(args: argparse.Namespace) -> int:
    resp = await _client(args).resolve(args.service, with_lease_time_left=args.lease_time)
    if args.json:
        _print_json(_as_json(resp))
        return 0
    rows = [
        (
            i.instance_id,
            ",".join(i.addresses),
            i.port,
            i.tier,
            i.weight,
            "/".join(x for x in (i.locality.region, i.locality.zone) if x) or "-",
            f"{i.lease_id:#x}",
            *([_seconds_left(i.lease_time_left_seconds)] if args.lease_time else []),
        )
        for i in resp.instances
    ]
    header = ("INSTANCE", "ADDRESSES", "PORT", "TIER", "WEIGHT", "LOCALITY", "LEASE")
    print(f"{args.service}  id {resp.service_id}  revision {resp.revision}")
    print(_table(rows, header + (("LEFT",) if args.lease_time else ())))
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    resp = await _client(args).list_services(suffix=args.suffix, limit=args.limit)
    if args.json:
        _print_json(_as_json(resp))
        return 0
    rows = [(s.name, s.instances, s.serving, s.service_id[:16] + "…") for s in resp.services]
    print(_table(rows, ("SERVICE", "INSTANCES", "SERVING", "SERVICE ID")))
    if resp.next_page_token:
        print(f"(more after {resp.next_page_token})")
    return 0


async def cmd_watch(args: argparse.Namespace) -> int:
    client = _client(args)
    mirror = Mirror()
    seen = 0
    async for msg in client.watch(args.from_revision, subscriber_id=f"cli/{os.getpid()}", suffix=args.suffix):
        mirror.apply(msg)
        seen += 1
        if args.json:
            print(json.dumps(_as_json(msg), sort_keys=True), flush=True)
        else:
            _print_watch_message(msg, len(mirror.instances))
        if args.count and seen >= args.count:
            break
    await client.close()
    return 0


def _print_watch_message(msg: pb.WatchResponse, total: int) -> None:
    kind = pb.WatchResponse.Kind.Name(msg.kind)
    if msg.kind in (pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END):
        print(f"rev {msg.revision} {kind}: {len(msg.instances)} instances (mirror holds {total})", flush=True)
    elif msg.kind == pb.WatchResponse.PROGRESS:
        print(f"rev {msg.revision} PROGRESS", flush=True)
    for d in msg.deltas:
        what = pb.InstanceDelta.Kind.Name(d.kind)
        print(f"rev {d.revision} {what} {d.instance.service} {d.instance.instance_id}", flush=True)


async def cmd_status(args: argparse.Namespace) -> int:
    st = await _client(args).cluster_status()
    if args.json:
        _print_json(_as_json(st))
        return 0
    print(f"replica {st.replica_id} (v{st.replica_version}) via etcd {st.etcd_endpoint}")
    print(
        f"etcd revision {st.etcd_revision}, view revision {st.view_revision}, "
        f"resumable from {st.history_start_revision}"
    )
    compacted = f"revision {st.compact_revision}" if st.compact_revision else "never"
    print(
        f"db size {_size(st.db_size_bytes)} of {_size(st.db_quota_bytes)} quota; last compaction {compacted}"
    )
    print(f"{st.services} services, {st.instances} instances\n")
    members = [
        (
            f"{m.id:x}",
            m.name,
            ",".join(m.client_urls),
            "leader" if m.is_leader else "",
            "up" if m.reachable else f"DOWN {m.error[:40]}",
        )
        for m in st.members
    ]
    print(_table(members, ("MEMBER", "NAME", "CLIENT URLS", "ROLE", "STATE")))
    if st.replicas:
        replicas = [(r.replica_id, r.address, r.version, _started(r.started_unix_ms)) for r in st.replicas]
        print()
        print(_table(replicas, ("REPLICA", "ADDRESS", "VERSION", "STARTED")))
    if st.propagation:
        ms = sorted(p.seconds * 1000 for p in st.propagation)
        print(
            f"\npropagation to subscribers ({len(ms)} samples): p50 {ms[len(ms) // 2]:.1f} ms, "
            f"p99 {ms[min(len(ms) - 1, len(ms) * 99 // 100)]:.1f} ms, max {ms[-1]:.1f} ms"
        )
    if st.subscribers:
        subs = [
            (s.subscriber_id or "-", s.peer, s.applied_revision, s.lag_revisions, f"{s.lag_seconds:.3f}")
            for s in st.subscribers
        ]
        print()
        print(_table(subs, ("SUBSCRIBER", "PEER", "APPLIED", "LAG REV", "LAG S")))
    return 0


def _seconds_left(seconds: int) -> str:
    return "expired" if seconds < 0 else f"{seconds}s"


def _started(unix_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_ms / 1000)) if unix_ms else "-"


def _size(n: int) -> str:
    """Bytes for people: 512 B, 20.0 KiB, 2.0 GiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def run(handler: Handler, args: argparse.Namespace) -> int:
    """Run a command's coroutine; print registry refusals readably."""
    logging.basicConfig(
        level=os.environ.get("SERVAL_LOG", "WARNING"), format="%(asctime)s %(name)s %(message)s"
    )
    try:
        return asyncio.run(handler(args))
    except RpcError as e:
        print(f"serval: {e.code.name}: {e.details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
