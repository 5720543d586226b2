"""Kernel objects of the namespace test bed: list, empty and delete namespaces; sweep aborted runs.

The I/O helpers under `deploy.netns.NetnsLab`, usable alone (e.g. by
``serval testbed down``). Every command has a timeout; nothing here touches a
namespace whose name does not come from `deploy.topology`'s naming, except
`namespace_pids` and `kill_namespace_processes`, which act on the name given.

Ownership protocol: a live lab holds an exclusive `flock` on
``<state_dir>/<run>.lock`` from before its first namespace exists until after its
last is gone. A run whose lock is free or missing has been abandoned (its owner
died without destroying it); `sweep` removes such runs and never a live one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from deploy.topology import PREFIX, LabNames, run_of_namespace

STATE_DIR = Path("/run/serval-netns")
_IP_TIMEOUT = 10.0
_KILL_WAIT = 5.0


class NetnsError(RuntimeError):
    """An `ip` command failed; the message has the command and its stderr."""


def unavailable_reason() -> str | None:
    """Why labs cannot be built here (not root, no ``ip netns``), or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        subprocess.run(["ip", "netns", "list"], capture_output=True, check=True, timeout=_IP_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        return f"`ip netns` is unavailable: {e}"
    return None


def ip(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command (an ``ip ...`` argv) with a timeout; raise `NetnsError` if it fails and `check`."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        raise NetnsError(f"{' '.join(argv)}: timed out after {_IP_TIMEOUT:.0f}s") from e
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = ip(["ip", "-j", "netns", "list"]).stdout.strip()
    return [entry["name"] for entry in json.loads(out)] if out else []


def namespace_pids(namespace: str) -> list[int]:
    """Processes whose network namespace is `namespace` (empty if it does not exist)."""
    done = ip(["ip", "netns", "pids", namespace], check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def kill_namespace_processes(namespace: str, wait: float = _KILL_WAIT) -> None:
    """SIGKILL every process in `namespace` and wait (bounded) until none is left; NetnsError if some are."""
    deadline = time.monotonic() + wait
    while pids := namespace_pids(namespace):
        if time.monotonic() > deadline:
            raise NetnsError(f"processes {pids} in {namespace} survived SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def remove_namespaces(names: Sequence[str]) -> None:
    """Kill the processes in each of `names`, then delete them; missing ones are skipped."""
    existing = set(namespaces())
    for ns in names:
        if ns in existing:
            kill_namespace_processes(ns)
    for ns in names:
        if ns in existing:
            done = ip(["ip", "netns", "del", ns], check=False)
            if done.returncode != 0 and ns in namespaces():
                raise NetnsError(f"ip netns del {ns}: {done.stderr.strip()}")


def sweep(
    prefix: str = PREFIX, state_dir: Path = STATE_DIR, *, force: bool = False, run: str | None = None
) -> list[str]:
    """Remove the leftovers of aborted runs whose names start with `prefix`; return the namespaces removed.

    A run is a leftover when nobody holds its lock (see the module docstring);
    with `force`, every matching run is removed, live or not. With `run`, only
    that run is considered (``serval testbed down`` after its supervisor ended).
    """
    runs: dict[str, list[str]] = {}
    for ns in namespaces():
        ns_run = run_of_namespace(ns)
        if ns_run is not None and ns.startswith(prefix) and run in (None, ns_run):
            runs.setdefault(ns_run, []).append(ns)
    removed: list[str] = []
    for found, names in sorted(runs.items()):
        with _claim(state_dir / f"{found}.lock", force) as claimed:
            if claimed:
                # hosts first, the switch (exactly "sv-<run>") last
                remove_namespaces(sorted(names, key=lambda n: n == LabNames(found).switch))
                removed += names
    return removed


@contextlib.contextmanager
def _claim(lock_path: Path, force: bool) -> Iterator[bool]:
    """Yield True if the run of `lock_path` is abandoned (lock free or missing) or `force`.

    While the body runs the lock is held, so a concurrent sweep skips the run;
    the lock file is removed when the body succeeds.
    """
    try:
        lock = lock_path.open("rb")
    except FileNotFoundError:
        yield True
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield force
            return
        yield True
        lock_path.unlink(missing_ok=True)
