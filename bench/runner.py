"""What every benchmark command does around its phases: run folder, signals, clean-up, output.

`run_benchmark` creates a fresh run folder under ``--bench-dir``, makes SIGINT and
SIGTERM raise `KeyboardInterrupt` once (later ones are ignored while cleaning up),
runs the phases, removes the run folder (after a failure it keeps the logs and
deletes only `data_globs`, unless ``--keep``), writes the JSON, prints the report
and returns the exit status: 0, 1 on failure or (``--strict``) a missed target,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol


class Verdict(Protocol):
    """A summary row: `passed` is None for rows without a target."""

    @property
    def passed(self) -> bool | None: ...


def run_benchmark(
    args: argparse.Namespace,
    name: str,
    run: Callable[[Path], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    summary_rows: Callable[[dict[str, Any]], Sequence[Verdict]],
    data_globs: Sequence[str] = (),
) -> int:
    """Run `run(run_dir)` as the module docstring says; `args` has bench_dir, json, keep, strict."""
    _stop_on_signals()
    args.bench_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=args.bench_dir)).resolve()
    try:
        results = run(run_dir)
    except KeyboardInterrupt:
        _tidy(run_dir, args.keep, data_globs)
        print(f"bench: interrupted; everything started was stopped (logs in {run_dir})", file=sys.stderr)
        return 130
    except Exception as e:
        _tidy(run_dir, args.keep, data_globs)
        print(f"bench: failed: {type(e).__name__}: {e}\nlogs in {run_dir}", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nJSON: {args.json}")
    missed = [r for r in summary_rows(results) if r.passed is False]
    return 1 if args.strict and missed else 0


def _tidy(run_dir: Path, keep: bool, data_globs: Sequence[str]) -> None:
    """After a failure: keep the logs, remove the bulky data (unless `keep`)."""
    if keep:
        return
    for pattern in data_globs:
        for data in run_dir.glob(pattern):
            shutil.rmtree(data, ignore_errors=True)


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt once; later ones are ignored while cleaning up."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
