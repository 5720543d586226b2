"""pytest fixture for multi-host tests in network namespaces (see `deploy.netns`).

- `netns_lab`: a factory ``make(spec) -> NetnsLab``; each call builds the
  topology described by `spec` (the dict of `Topology.from_dict`) with logs in
  the test's tmp_path. Every lab it made is destroyed when the test ends, pass
  or fail: processes stopped, namespaces (with their veths and bridges) deleted.
  Leftovers of aborted earlier runs are swept when a lab is created.
  Skips the test when not root or when ``ip netns`` is unavailable.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from deploy.netns import NetnsLab, unavailable_reason
from deploy.topology import Topology

MakeLab = Callable[[Mapping[str, Any]], NetnsLab]


@pytest.fixture
def netns_lab(tmp_path: Path) -> Iterator[MakeLab]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    numbers = itertools.count()
    with contextlib.ExitStack() as stack:  # destroys every lab even if one destroy raises

        def make(spec: Mapping[str, Any]) -> NetnsLab:
            lab = NetnsLab(Topology.from_dict(spec), tmp_path / f"lab-{next(numbers)}")
            stack.callback(lab.destroy)
            lab.create()
            return lab

        yield make
