"""The gRPC baselines (`bench.echo_server`) serve what the benchmark's unchanged client
code expects: a snapshot end, then every registration as a PUT delta; RegisterStream answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import pytest

from bench.common import RegistryProcess, sample_instance
from registry.api.client import RegistryClient
from registry.api.v1 import registry_pb2 as pb

pytestmark = pytest.mark.integration


async def test_echo_server_fans_each_registration_out_to_every_watch(tmp_path: Path) -> None:
    with RegistryProcess.echo("echo", tmp_path) as echo:
        client = RegistryClient([echo.target], timeout=10)
        watches = [
            cast(AsyncGenerator[pb.WatchResponse, None], aiter(client.watch(0, subscriber_id=f"s{i}")))
            for i in range(3)
        ]
        try:
            for w in watches:
                assert (await anext(w)).kind == pb.WatchResponse.SNAPSHOT_END
            lease = (await client.open_session(30)).lease_id
            for n in range(2):
                await client.register(sample_instance("svc.bench", f"i{n}"), lease_id=lease)
            for w in watches:
                got = [(await anext(w)).deltas[0] for _ in range(2)]
                assert [(d.instance.instance_id, d.revision) for d in got] == [("i0", 1), ("i1", 2)]
                assert all(d.kind == pb.InstanceDelta.PUT for d in got)
            stream = client.registration_stream()
            answer = await stream.register(sample_instance("svc.bench", "i2"), lease_id=lease)
            await stream.close()
            assert answer.revision == 3
        finally:
            for w in watches:
                await w.aclose()  # ends the call (Watch cancels it)
            await client.close()
            await asyncio.sleep(0.05)  # grpc's request-iterator tasks finish cancelling
