"""What every benchmark phase shares: settings, the sample record, replica processes, /proc readings.

Linux only: latencies across processes compare `time.monotonic_ns()`
(CLOCK_MONOTONIC, one clock for the whole machine) and memory comes from
``/proc/PID/status``.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

import grpc
import psutil

from deploy.local_cluster import registry_serving
from registry.model import Instance
from registry.processes import ChildProcess
from registry.raft.local_etcd import free_ports
from registry.raft.records import encode_instance

HOST = "127.0.0.1"
RECORD_BYTES = 300  # size of one registration record in etcd, and of each raw put's value


@dataclass(frozen=True)
class Settings:
    """Counts and durations of one benchmark run (`FULL` or `QUICK`)."""

    mode: str
    load_workers: int = 4  # load-generator processes ...
    load_coroutines: int = 16  # ... times concurrent requests in each = requests in flight
    warmup_s: float = 2.0
    duration_s: float = 10.0
    load_services: int = 100
    # (subscribers, seconds between registrations): a sustained 20/s at every
    # size, and at the largest size also registrations 0.5 s apart, so that
    # each one's propagation is measured on its own rather than behind the last.
    fanout_rounds: tuple[tuple[int, float], ...] = ((1, 0.05), (100, 0.05), (1000, 0.05), (1000, 0.5))
    fanout_registrations: int = 100
    subscriber_workers: int = 8
    memory_instances: int = 100_000
    memory_services: int = 1_000
    memory_subscribers: int = 1_000
    memory_snapshots: int = 10  # subscribers that take the full snapshot; the others resume

    @property
    def in_flight(self) -> int:
        return self.load_workers * self.load_coroutines


FULL = Settings(mode="full")
QUICK = Settings(
    mode="quick",
    warmup_s=1.0,
    duration_s=3.0,
    fanout_rounds=((1, 0.05), (50, 0.05), (50, 0.5)),
    fanout_registrations=20,
    memory_instances=10_000,
    memory_subscribers=100,
)


def sample_instance(service: str, instance_id: str, ttl_seconds: int = 60, n: int = 0) -> Instance:
    """A plausible instance whose etcd record is exactly `RECORD_BYTES` long (metadata pads it)."""
    base = Instance(
        service=service,
        instance_id=instance_id,
        addresses=(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",),
        port=8080,
        weight=100,
        region="eu-west",
        zone="eu-west-1a",
        metadata={"app": "bench", "version": "1.4.2", "pad": ""},
        ttl_seconds=ttl_seconds,
    )
    pad = "x" * max(0, RECORD_BYTES - len(encode_instance(base)))
    return replace(base, metadata={**base.metadata, "pad": pad})


def service_name(index: int, zone: str) -> str:
    """The `index`-th benchmark service name under `zone` (e.g. ``svc-0042.load.bench``)."""
    return f"svc-{index:04d}.{zone}.bench"


class RegistryProcess:
    """One `serval registry` replica process on a free loopback port, with its own key prefix
    (or, from `echo`, the fan-out baseline that serves the same API without a registry).

    Each phase runs its own replica under its own prefix, so a phase starts
    from an empty view and its memory reading holds only its own data.
    """

    def __init__(self, name: str, etcd_endpoints: list[str], prefix: str, log_dir: Path) -> None:
        self.target = f"{HOST}:{free_ports(HOST, 1)[0]}"
        argv = [
            sys.executable, "-m", "deploy.cli", "registry", "--etcd", ",".join(etcd_endpoints),
            "--listen", self.target, "--replica-id", name, "--prefix", prefix,
        ]  # fmt: skip
        self.child = ChildProcess(name, argv, log_dir / f"{name}.log")

    @classmethod
    def echo(cls, name: str, log_dir: Path) -> RegistryProcess:
        """The propagation baseline instead of a replica: `bench.echo_server` (no etcd)."""
        self = cls.__new__(cls)
        self.target = f"{HOST}:{free_ports(HOST, 1)[0]}"
        argv = [sys.executable, "-m", "bench.echo_server", "--listen", self.target]
        self.child = ChildProcess(name, argv, log_dir / f"{name}.log")
        return self

    @property
    def pid(self) -> int:
        assert self.child.proc is not None, "the replica is not running"
        return self.child.proc.pid

    def __enter__(self) -> RegistryProcess:
        self.child.start()
        try:
            self.child.wait_until(lambda: registry_serving(self.target), timeout=30)
        except BaseException:
            self.child.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.child.stop()


def proc_status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of process `pid`, in kB, from ``/proc/PID/status``."""
    wanted = {"VmRSS", "VmHWM"}
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            out[name] = int(value.split()[0])
    return out


def machine_info() -> dict[str, object]:
    """Where the figures come from: CPUs, memory, kernel, Python and grpcio versions."""
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.partition(":")[2].strip()
            break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gb": round(mem_kb / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class CpuMeter:
    """CPU time of named groups of processes and of the whole machine, as busy cores over a window."""

    def __init__(self, groups: Mapping[str, Sequence[int]]) -> None:
        self._groups = {name: [psutil.Process(pid) for pid in pids] for name, pids in groups.items()}

    def sample(self) -> dict[str, float]:
        """CPU seconds used so far by each group (user + system), and by all CPUs (``machine``)."""
        out = {name: sum(sum(p.cpu_times()[:2]) for p in procs) for name, procs in self._groups.items()}
        t = psutil.cpu_times()
        out["machine"] = t.user + t.nice + t.system + t.irq + t.softirq + t.steal  # Linux fields
        return out

    @staticmethod
    def busy_cores(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
        """Average cores each group and the machine kept busy between two samples.

        ``other`` is what the machine spent outside the measured groups: the
        supervisor, kernel work not charged to a process (loopback networking)
        and anything else running on the machine, which skews the figures.
        """
        busy = {name: round((after[name] - before[name]) / seconds, 2) for name in before}
        groups = sum(v for name, v in busy.items() if name != "machine")
        busy["other"] = round(max(0.0, busy["machine"] - groups), 2)
        return busy


def etcd_pid() -> int:
    """PID of the etcd server this process started (the first child named etcd)."""
    return next(p.pid for p in psutil.Process().children() if p.name() == "etcd")


def tcp_connections(pid: int) -> int:
    """Established TCP connections of process `pid`."""
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED)


_STARTED = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr, stamped with seconds since the benchmark started."""
    print(f"[{time.monotonic() - _STARTED:5.1f}s] {message}", file=sys.stderr, flush=True)
