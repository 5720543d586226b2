"""The Prometheus text exposition (format 0.0.4) and a minimal `/metrics` endpoint.

Shared by every Serval process that exports metrics (the host agent, the DNS
bridge, the dashboard) so that none needs `prometheus_client`: `render` writes
`Family`s byte for byte as `prometheus_client.generate_latest` does
(`tests/unit/test_agent_metrics.py` compares the two and parses the result with
`prometheus_client`'s parser; that package is a dev dependency only), and
`MetricsServer` serves what a callable returns on the running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric family: `name` is the exposed name (counters end in `_total`)."""

    name: str
    kind: str  # "counter" or "gauge"
    doc: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)


def render(families: Iterator[Family] | Sequence[Family]) -> bytes:
    """The Prometheus text format (0.0.4), as `prometheus_client.generate_latest` writes it."""
    out: list[str] = []
    for f in families:
        doc = f.doc.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {f.name} {doc}\n# TYPE {f.name} {f.kind}\n")
        for labels, value in f.samples:
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels))
            out.append(
                f"{f.name}{{{pairs}}} {_go_float(value)}\n" if pairs else f"{f.name} {_go_float(value)}\n"
            )
    return "".join(out).encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _go_float(value: float) -> str:
    """Go's float formatting, as Prometheus clients write sample values."""
    d = float(value)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


class MetricsServer:
    """`GET /metrics` on `(addr, port)` (port 0 = any), served on the running event loop:
    the bytes `body()` returns, read at each scrape.

    HTTP/1.0-style: one request per connection, then close. Any other path is
    404, any other method 405; a request head over 8 KiB or slower than 5 s
    is dropped. `stop()` closes the socket and cancels scrapes in progress.
    """

    HEAD_LIMIT = 8192
    HEAD_TIMEOUT = 5.0

    def __init__(self, body: Callable[[], bytes], addr: str = "127.0.0.1", port: int = 0) -> None:
        self.body = body
        self.addr = addr
        self.port = port
        self._server: asyncio.Server | None = None
        self._scrapes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen; return the bound port."""
        self._server = await asyncio.start_server(self._serve, self.addr, self.port, limit=self.HEAD_LIMIT)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._scrapes):
            task.cancel()
        await asyncio.gather(*self._scrapes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._scrapes.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.HEAD_TIMEOUT)
            writer.write(self._respond(head))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            self._scrapes.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method != b"GET":
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        elif path not in (b"/metrics", b"/"):
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        else:
            status, ctype, body = "200 OK", CONTENT_TYPE, self.body()
        fields = f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        return f"HTTP/1.0 {status}\r\n{fields}\r\n".encode() + body
