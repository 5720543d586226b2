"""Child processes that are always reaped: start, wait until ready, stop (TERM, then KILL).

Used by the local etcd clusters (`registry.raft.local_etcd`), `serval up` and
the benchmarks. Every child runs in its own session, so that a terminal's
Ctrl-C reaches only the supervisor, which then stops the children in a chosen
order; signals go to the child's whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ChildProcess:
    """One supervised child; its stdout and stderr are appended to `log_path`."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: Sequence[str] | None = None) -> None:
        """Launch the child (with `argv` instead of the constructor's, if given); no-op if running."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(argv) if argv is not None else self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._env,
            )

    @property
    def running(self) -> bool:
        """True while the process this object started has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float, poll: float = 0.1) -> None:
        """Poll `ready` until it is true; raise RuntimeError (with the log tail) on timeout or exit."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} was not ready after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(poll)

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the child's process group without waiting (no-op if not running)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 5.0, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send `sig` to the process group, SIGKILL it after `grace` seconds; always reaps."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self.send_signal(sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the log, each prefixed with the child's name."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(f"  {self.name}| {line}" for line in text.splitlines()[-lines:])
