"""``serval testbed up|down|status``: the test bed (`deploy.testbed_run.Testbed`) as a command.

``up`` starts ``serval testbed supervise`` detached (its own session, output in
``<state>/logs/testbed.log``): the supervisor builds the bed with `Testbed`, holds the
run's lock and owns the bed until SIGTERM/SIGINT/SIGHUP (or until ``--owner-pid``
exits), then removes it. ``up`` returns once ``state.json`` appears (the bed is
healthy), printing what is where, or exits 1 with the supervisor's log. ``status``
reads ``state.json`` and runs every probe inside its namespace. ``down`` signals the
supervisor (SIGKILL after `STOP_TIMEOUT`), removes whatever of the run is left
(`deploy.netns.sweep` of that run alone, only if no live owner holds its lock) and
deletes the state folder, but only one that ``up`` made (it holds `MARKER`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from deploy.netns import sweep, unavailable_reason
from deploy.testbed import TestbedSpec, describe, numbered_agents, plan
from deploy.testbed_run import (
    MARKER,
    START_TIMEOUT,
    Testbed,
    check_loopback,
    probe_all,
    read_state,
)
from deploy.topology import LabNames
from registry.raft.local_etcd import find_etcd

STATE_ROOT = Path("/run/serval-testbed")
DEFAULT_NAME = "tb"
STOP_TIMEOUT = 30.0


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serval testbed up|down|status`` (and the internal ``supervise``)."""
    p = sub.add_parser("testbed", help="the multi-host test bed in network namespaces (root)")
    tb = p.add_subparsers(dest="testbed_command", required=True, metavar="{up,down,status}")
    up = tb.add_parser("up", help="build the bed and start every component, detached")
    supervise = tb.add_parser("supervise")  # internal: the detached owner that `up` starts
    for q in (up, supervise):
        _common(q)
        q.add_argument("--agents", type=int, default=3, help="host agents (default %(default)s)")
        q.add_argument("--etcd-members", type=int, default=3, help="etcd members (default %(default)s)")
        q.add_argument("--registries", type=int, default=2, help="registry replicas (default %(default)s)")
        q.add_argument("--no-dns", action="store_true", help="no DNS bridge")
        q.add_argument("--no-dashboard", action="store_true", help="no dashboard")
        q.add_argument("--timeout", type=float, default=START_TIMEOUT, help="start-up limit, seconds")
        q.add_argument(
            "--expose-dashboard",
            metavar="127.0.0.1:PORT",
            default=None,
            help="also serve the dashboard on this loopback address (through a Unix-socket relay)",
        )
        q.add_argument("--owner-pid", type=int, default=0, help=argparse.SUPPRESS)
    up.set_defaults(sync_handler=run_up)
    supervise.set_defaults(sync_handler=run_supervise)
    down = tb.add_parser("down", help="stop every component and remove the bed")
    _common(down)
    down.set_defaults(sync_handler=run_down)
    status = tb.add_parser("status", help="each component's health (exit 1 if one is unhealthy)")
    _common(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(sync_handler=run_status)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=DEFAULT_NAME, help="the bed's name (default %(default)s)")
    p.add_argument("--state-dir", type=Path, default=None, help=f"default {STATE_ROOT}/NAME")


def _state_dir(args: argparse.Namespace) -> Path:
    path: Path = args.state_dir or STATE_ROOT / args.name
    return path.absolute()


def spec_from_args(args: argparse.Namespace) -> TestbedSpec:
    return TestbedSpec(
        etcd_members=args.etcd_members,
        registries=args.registries,
        dns=not args.no_dns,
        dashboard=not args.no_dashboard,
        agents=numbered_agents(args.agents),
    )


def run_up(args: argparse.Namespace) -> int:
    """Start the supervisor detached, wait until the bed is up (or failed), print what is where."""
    if (reason := unavailable_reason()) is not None:
        print(f"serval testbed: {reason}", file=sys.stderr)
        return 2
    state_dir = _state_dir(args)
    try:
        LabNames(args.name)
        spec = spec_from_args(args)
        the_plan = plan(
            spec, run=args.name, state_dir=state_dir, python=sys.executable, etcd_binary=find_etcd()
        )
        if args.expose_dashboard:
            check_loopback(args.expose_dashboard, spec)
    except (ValueError, RuntimeError) as e:
        print(f"serval testbed: {e}", file=sys.stderr)
        return 2
    if (record := read_state(state_dir)) is not None and supervisor_alive(record["pid"]):
        print(f"serval testbed: {args.name!r} is already up (serval testbed down --name {args.name})")
        return 1
    if state_dir.exists() and any(state_dir.iterdir()):
        if not (state_dir / MARKER).exists():
            print(f"serval testbed: {state_dir} is not empty and not a test bed's", file=sys.stderr)
            return 2
        remove_bed(args.name, state_dir)  # leftovers of a bed that died
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER).write_text(args.name)
    argv = [
        sys.executable, "-m", "deploy.cli", "testbed", "supervise", "--name", args.name,
        "--state-dir", str(state_dir), "--agents", str(args.agents), "--etcd-members", str(args.etcd_members),
        "--registries", str(args.registries), "--timeout", str(args.timeout),
        "--owner-pid", str(args.owner_pid),
        *(["--no-dns"] if args.no_dns else []), *(["--no-dashboard"] if args.no_dashboard else []),
        *(["--expose-dashboard", args.expose_dashboard] if args.expose_dashboard else []),
    ]  # fmt: skip
    with (state_dir / "logs" / "testbed.log").open("ab") as log:
        supervisor = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    print(f"serval testbed: starting {args.name!r} (supervisor pid {supervisor.pid})", flush=True)
    deadline = time.monotonic() + args.timeout + 30
    while read_state(state_dir) is None:
        if supervisor.poll() is not None or time.monotonic() > deadline:
            supervisor.kill()
            supervisor.wait()
            log_text = (state_dir / "logs" / "testbed.log").read_text(errors="replace")
            print(f"serval testbed: {args.name!r} did not come up:\n{log_text[-4000:]}", file=sys.stderr)
            remove_bed(args.name, state_dir, keep_logs=True)
            return 1
        time.sleep(0.2)
    namespaces = {h: LabNames(args.name).namespace(h) for h in the_plan.topology["hosts"]}
    print(describe(the_plan, namespaces, sys.executable, args.name), flush=True)
    if args.expose_dashboard:
        print(f"  dashboard on this machine's loopback: http://{args.expose_dashboard}", flush=True)
    return 0


def run_supervise(args: argparse.Namespace) -> int:
    """Own the bed until SIGTERM/SIGINT/SIGHUP (or until --owner-pid exits), then remove it."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    bed = Testbed(spec_from_args(args), _state_dir(args), run=args.name)
    try:
        bed.up(timeout=args.timeout, expose_dashboard=args.expose_dashboard)
    except Exception as e:  # up() removed what it built; the log says why
        print(f"serval testbed: {e}", flush=True)
        return 1
    print(f"serval testbed: {args.name!r} is up", flush=True)
    try:
        while not stop.wait(0.5):
            if args.owner_pid and not pid_alive(args.owner_pid):
                print(f"serval testbed: owner {args.owner_pid} exited", flush=True)
                break
    finally:
        bed.down()
        print(f"serval testbed: {args.name!r} is down", flush=True)
    return 0


def run_down(args: argparse.Namespace) -> int:
    """Stop the supervisor (SIGTERM, SIGKILL after STOP_TIMEOUT), then remove whatever is left."""
    if (reason := unavailable_reason()) is not None:
        print(f"serval testbed: {reason}", file=sys.stderr)
        return 2
    state_dir = _state_dir(args)
    if state_dir.exists() and any(state_dir.iterdir()) and not (state_dir / MARKER).exists():
        print(f"serval testbed: {state_dir} is not a test bed's; not touching it", file=sys.stderr)
        return 2
    removed = remove_bed(args.name, state_dir)
    print(f"serval testbed: {args.name!r} is down{'' if removed else ' (it was not up)'}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    record = read_state(_state_dir(args))
    if record is None:
        print(f"serval testbed: {args.name!r} is not up", file=sys.stderr)
        return 3
    health = probe_all(record)
    owner = pid_alive(record["pid"])  # the supervisor, or the process that called `Testbed.up`
    if args.json:
        print(
            json.dumps(
                {
                    "name": record["name"],
                    "owner": owner,
                    "components": [asdict(h) for h in health],
                }
            )
        )
    else:
        print(f"test bed {record['name']!r}: owner pid {record['pid']} {'running' if owner else 'GONE'}")
        for h in health:
            print(f"  {h.component:<10} {h.namespace:<18} {h.endpoint:<28} {'ok' if h.healthy else 'DOWN'}"
                  f"{'' if h.healthy else '  ' + h.detail}")  # fmt: skip
    return 0 if owner and all(h.healthy for h in health) else 1


def remove_bed(name: str, state_dir: Path, *, keep_logs: bool = False) -> bool:
    """Stop the bed's supervisor, remove the run's namespaces (if no live owner holds its lock) and
    the state folder (only one `up` made). Return True if there was anything to remove."""
    record = read_state(state_dir)
    if record is not None and supervisor_alive(record["pid"]):
        os.kill(record["pid"], signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid_alive(record["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(record["pid"]):
            os.kill(record["pid"], signal.SIGKILL)
            while pid_alive(record["pid"]):
                time.sleep(0.05)
    found = bool(sweep(run=name)) or record is not None
    if (state_dir / MARKER).exists():
        if keep_logs:
            for child in state_dir.iterdir():
                if child.name not in ("logs", MARKER):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(state_dir)
    return found


def pid_alive(pid: int) -> bool:
    """True if a process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def supervisor_alive(pid: int) -> bool:
    """True if `pid` is a live ``serval testbed supervise`` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return pid_alive(pid) and b"testbed" in cmdline and b"supervise" in cmdline
