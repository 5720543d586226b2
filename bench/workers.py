"""Load-generator and subscriber processes: spawned, talked to by queues, always reaped.

Each worker runs one coroutine `entry(link, job)` in its own event loop and
process (multiprocessing, spawn), so client-side CPU is spread over processes
as it would be over hosts. The supervisor and the workers exchange
``(worker_index, kind, payload)`` tuples: workers send on one shared outbox,
the supervisor sends to each worker's inbox. A worker that raises sends
``"error"`` with its traceback; `Workers.collect` turns that, a worker's
death or a timeout into `WorkerError`. Leaving the ``with`` block terminates
(then kills) every worker still alive, whatever happened.

Workers ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and
the supervisor decides how to stop them (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import signal
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from types import TracebackType
from typing import Any

Message = tuple[int, str, Any]
Entry = Callable[["WorkerLink", Any], Coroutine[Any, Any, None]]


class WorkerError(RuntimeError):
    """A worker failed, died or did not answer in time."""


@dataclass
class WorkerLink:
    """A worker's end of the queues."""

    index: int
    inbox: mp.Queue[Any]
    outbox: mp.Queue[Message]

    def send(self, kind: str, payload: Any = None) -> None:
        self.outbox.put((self.index, kind, payload))

    async def receive(self, timeout: float) -> Any:
        """The next message from the supervisor; `queue.Empty` after `timeout` seconds."""
        return await asyncio.to_thread(self.inbox.get, True, timeout)


def run_worker(entry: Entry, link: WorkerLink, job: Any) -> None:
    """Process target: run `entry(link, job)`; report any exception as ``"error"``."""
    try:
        asyncio.run(entry(link, job))
    except BaseException:
        link.send("error", traceback.format_exc())


class Workers:
    """One spawned process per job, each running `entry(link, job)` (see module docstring)."""

    def __init__(self, name: str, entry: Entry, jobs: Sequence[Any]) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self._outbox: mp.Queue[Message] = ctx.Queue()
        self._held: list[Message] = []  # received, of a kind nobody collected yet
        self._inboxes: list[mp.Queue[Any]] = [ctx.Queue() for _ in jobs]
        self._procs: list[SpawnProcess] = [
            ctx.Process(
                target=run_worker,
                args=(entry, WorkerLink(i, self._inboxes[i], self._outbox), job),
                name=f"{name}-{i}",
                daemon=True,
            )
            for i, job in enumerate(jobs)
        ]

    def __len__(self) -> int:
        return len(self._procs)

    @property
    def pids(self) -> list[int]:
        """PIDs of the started workers."""
        return [p.pid for p in self._procs if p.pid is not None]

    def __enter__(self) -> Workers:
        # Children inherit an ignored SIGINT across exec, so a Ctrl-C during their
        # start-up (imports take a second) cannot kill them half-way. A SIGINT in
        # the few milliseconds of this loop is lost.
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in self._procs:
                proc.start()
        finally:
            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(grace=5.0 if exc_type is None else 0.0)

    def send_all(self, message: Any) -> None:
        for inbox in self._inboxes:
            inbox.put(message)

    async def collect(self, kind: str, timeout: float) -> list[Any]:
        """One `kind` payload from every worker, in worker order; `WorkerError` otherwise.

        Polls the queue without blocking, so the caller's event loop keeps running
        (and a Ctrl-C is never stuck behind a thread blocked on the queue).
        Messages of other kinds are kept for a later `collect`.
        """
        payloads = {index: payload for index, got, payload in self._held if got == kind}
        self._held = [m for m in self._held if m[1] != kind]
        exited: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        while len(payloads) < len(self._procs):
            try:
                index, got, payload = self._outbox.get_nowait()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise WorkerError(
                        f"{self.name}: {len(payloads)}/{len(self)} workers sent {kind!r} in {timeout:.0f}s"
                    ) from None
                self._check_exited(payloads, exited)
                await asyncio.sleep(0.01)
                continue
            if got == "error":
                raise WorkerError(f"{self.name} worker {index} failed:\n{payload}")
            if got == kind:
                payloads[index] = payload
            else:
                self._held.append((index, got, payload))
        return [payloads[i] for i in range(len(self._procs))]

    def stop(self, grace: float = 5.0) -> None:
        """Wait up to `grace` seconds for the workers to exit, then terminate and kill the rest."""
        deadline = time.monotonic() + grace
        for proc in self._procs:
            if proc.pid is not None:
                proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def _check_exited(self, answered: dict[int, Any], exited: dict[int, float]) -> None:
        """Raise for a worker that exited without answering, a second after (its last words may lag)."""
        now = time.monotonic()
        for i, proc in enumerate(self._procs):
            if i in answered or proc.exitcode is None:
                continue
            if now - exited.setdefault(i, now) > 1.0:
                raise WorkerError(f"{self.name} worker {i} exited with code {proc.exitcode}")
