"""pytest fixtures that run real etcd on loopback (see `registry.raft.local_etcd`).

- `etcd_single`: one single-member cluster shared by the whole session.
- `etcd_prefix`: a fresh key prefix per test, so tests sharing `etcd_single`
  never see each other's keys.
- `etcd_cluster3`: a fresh three-member cluster per test, for fault injection;
  every member is stopped (and reaped) when the test ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.raft.local_etcd import LocalEtcdCluster


@pytest.fixture(scope="session")
def etcd_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEtcdCluster]:
    cluster = LocalEtcdCluster(tmp_path_factory.mktemp("etcd-single"), size=1)
    with cluster:
        yield cluster


@pytest.fixture
def etcd_prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def etcd_cluster3(tmp_path: Path) -> Iterator[LocalEtcdCluster]:
    cluster = LocalEtcdCluster(tmp_path / "etcd3", size=3)
    with cluster:
        yield cluster
