"""pytest fixture for the multi-host test bed (`deploy.testbed_run.Testbed`).

- `testbed`: a factory ``make(spec) -> Testbed``; each call builds and starts
  the bed `spec` describes (`deploy.testbed.TestbedSpec`: how many etcd members
  and registry replicas, DNS, dashboard, which agent hosts on which networks,
  plain hosts), with its state and logs in the test's tmp_path, and returns it
  once every component is healthy. Every bed it made is removed when the test
  ends, pass or fail: processes stopped, namespaces (with their veths and
  bridges) deleted. Each bed gets a random run id, so it never collides with a
  user's ``serval testbed`` or another test's bed. Skips the test when not root
  or when ``ip netns`` is unavailable.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.netns import unavailable_reason
from deploy.testbed import TestbedSpec
from deploy.testbed_run import Testbed

MakeTestbed = Callable[[TestbedSpec], Testbed]


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[MakeTestbed]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    numbers = itertools.count()
    with contextlib.ExitStack() as stack:  # removes every bed even if one removal raises

        def make(spec: TestbedSpec) -> Testbed:
            bed = Testbed(spec, tmp_path / f"bed-{next(numbers)}")
            stack.callback(bed.down)
            bed.up()
            return bed

        yield make
