"""The client transports (`registry.api.rpc.Dial`) that client-level tests run over, as pytest params."""

from __future__ import annotations

import pytest

from registry.api import transport_grpclib
from registry.api.client import dial_grpcio

TRANSPORTS = [
    pytest.param(dial_grpcio, id="grpcio"),
    pytest.param(transport_grpclib.dial, id="grpclib"),
]
