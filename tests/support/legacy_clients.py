"""Unmodified TCP clients of the agent's translator (plain sockets, a tiny SOCKS5 client).

    python -m tests.support.legacy_clients echo --socks IP:PORT --name NAME [--bytes B]
    python -m tests.support.legacy_clients echo --direct IP:PORT [--bytes B]

`echo` connects (through the SOCKS5 proxy to service NAME, or directly to an
upstream port), sends B deterministic bytes, half-closes, reads everything back
and prints JSON ``{"reply": REP or null, "sent": B, "received": N, "match": bool}``;
exit status 0 iff the echo matched. Every call is bounded by `--timeout`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import threading

SOCKS_VERSION = 5


def parse_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def socks_request(name: str, port: int = 80) -> bytes:
    raw = name.encode()
    return bytes([SOCKS_VERSION, 1, 0, 3, len(raw)]) + raw + port.to_bytes(2, "big")


def socks_connect(
    proxy: tuple[str, int], name: str, port: int = 80, timeout: float = 10.0
) -> tuple[socket.socket, int]:
    """Connect through a SOCKS5 proxy (no auth) to `name`; the socket and the reply code.

    The socket is returned open whatever the code (the caller checks and closes it).
    Raises `ConnectionError` if the proxy ends the handshake without a full reply.
    """
    sock = socket.create_connection(proxy, timeout=timeout)
    try:
        sock.sendall(bytes([SOCKS_VERSION, 1, 0]))
        if recv_exact(sock, 2) != bytes([SOCKS_VERSION, 0]):
            raise ConnectionError("the proxy refused the no-auth method")
        sock.sendall(socks_request(name, port))
        head = recv_exact(sock, 4)
        if len(head) < 4:
            raise ConnectionError(f"short SOCKS reply {head!r}")
        size = {1: 4, 4: 16}.get(head[3])
        if size is None:
            size = recv_exact(sock, 1)[0]
        recv_exact(sock, size + 2)
    except BaseException:
        sock.close()
        raise
    return sock, head[1]


def payload(size: int) -> bytes:
    block = hashlib.sha256(b"serval-legacy").digest()
    return (block * (size // len(block) + 1))[:size]


def echo_over(sock: socket.socket, size: int) -> bytes:
    """Send `size` bytes (in a thread), half-close, and read to EOF; what came back."""
    data = payload(size)

    def send() -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    sender.join()
    return b"".join(chunks)


def echo(args: argparse.Namespace) -> int:
    reply: int | None = None
    if args.socks:
        sock, reply = socks_connect(parse_endpoint(args.socks), args.name, timeout=args.timeout)
    else:
        sock = socket.create_connection(parse_endpoint(args.direct), timeout=args.timeout)
    with sock:
        got = echo_over(sock, args.bytes) if reply in (None, 0) else b""
    ok = got == payload(args.bytes)
    print(json.dumps({"reply": reply, "sent": args.bytes, "received": len(got), "match": ok}))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("echo")
    via = e.add_mutually_exclusive_group(required=True)
    via.add_argument("--socks", help="SOCKS5 proxy ip:port")
    via.add_argument("--direct", help="upstream port ip:port")
    e.add_argument("--name", default="", help="service name (with --socks)")
    e.add_argument("--bytes", type=int, default=1 << 20)
    e.add_argument("--timeout", type=float, default=20.0)
    e.set_defaults(fn=echo)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
