"""Small applications that use the agent's client library, run inside lab hosts by the e2e tests.

    python -m tests.support.agent_apps serve NAME --socket S --tag T --seconds N
    python -m tests.support.agent_apps hello NAME --socket S --count K
    python -m tests.support.agent_apps send NAME --socket S --bytes B [--chunk C] [--pace-ms P]
    python -m tests.support.agent_apps dserve NAME --socket S --tag T --seconds N
    python -m tests.support.agent_apps decho NAME --socket S --count K [--pace-ms P]

- `serve`: listens on NAME (which registers it); prints ``accepted FLOW_ID`` per
  flow; for each accepted flow, a thread
  sends ``TAG\\n``, then reads to EOF while hashing, then sends the SHA-256 hex of
  what it read and closes. Exits after N seconds (bounded).
- `hello`: K connections by name in turn; each reads the first line (the server's
  tag) and closes. Prints JSON ``{"tags": {tag: count}, "errors": [...]}``.
- `send`: one connection; prints ``{"flow": id}`` at once, reads the tag, sends B
  deterministic pseudo-random bytes (optionally pacing chunks), half-closes, reads
  the server's SHA-256 and prints JSON ``{"tag", "sent_sha256", "server_sha256",
  "seconds"}`` (the last line).
- `dserve`: a datagram listener on NAME; prints ``accepted FLOW_ID`` per flow; each
  flow's thread answers every message M with ``TAG:`` + M until the peer closes.
- `decho`: one datagram flow; prints ``{"flow": id}`` at once, then sends K messages
  ``seq N`` (paced), collecting replies meanwhile; closes and prints JSON
  ``{"sent", "replies": [N, ...] (in arrival order), "tags", "bad"}`` (last line).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import socket
import sys
import threading
import time
from collections import Counter

from hostagent import client


def _read_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def _handle(conn: socket.socket, tag: str) -> None:
    with conn:
        conn.sendall(f"{tag}\n".encode())
        digest = hashlib.sha256()
        while chunk := conn.recv(1 << 16):
            digest.update(chunk)
        conn.sendall(digest.hexdigest().encode())


def serve(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.seconds
    with client.listen(args.name, agent_socket=args.socket) as listener:
        print("listening", flush=True)
        while (left := deadline - time.monotonic()) > 0:
            try:
                flow = listener.accept_flow(timeout=left)
            except TimeoutError:
                break
            print(f"accepted {flow.flow_id}", flush=True)
            threading.Thread(target=_handle, args=(flow.sock, args.tag), daemon=True).start()
    return 0


def hello(args: argparse.Namespace) -> int:
    tags: Counter[str] = Counter()
    errors: list[str] = []
    for _ in range(args.count):
        try:
            with client.connect(args.name, timeout=args.timeout, agent_socket=args.socket) as sock:
                tags[_read_line(sock)] += 1
        except (OSError, client.ServalError) as e:
            errors.append(f"{type(e).__name__}: {e}")
    print(json.dumps({"tags": dict(tags), "errors": errors}))
    return 0


def _payload(n: int, chunk: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest() * (chunk // 32 + 1)


def send(args: argparse.Namespace) -> int:
    started = time.monotonic()
    digest = hashlib.sha256()
    flow = client.connect_flow(args.name, timeout=args.timeout, agent_socket=args.socket)
    print(json.dumps({"flow": flow.flow_id}), flush=True)
    with flow.sock as sock:
        tag = _read_line(sock)
        sent, n = 0, 0
        while sent < args.bytes:
            data = _payload(n, args.chunk)[: min(args.chunk, args.bytes - sent)]
            sock.sendall(data)
            digest.update(data)
            sent, n = sent + len(data), n + 1
            if args.pace_ms:
                time.sleep(args.pace_ms / 1000)
        sock.shutdown(socket.SHUT_WR)
        server = b""
        while chunk := sock.recv(128):
            server += chunk
    print(
        json.dumps(
            {
                "tag": tag,
                "sent_sha256": digest.hexdigest(),
                "server_sha256": server.decode(),
                "seconds": time.monotonic() - started,
            }
        )
    )
    return 0


def _dhandle(flow: client.DatagramSocket, tag: str) -> None:
    with flow, contextlib.suppress(OSError):
        while message := flow.recv():
            flow.send(tag.encode() + b":" + message)


def dserve(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.seconds
    with client.listen(args.name, agent_socket=args.socket, datagram=True) as listener:
        print("listening", flush=True)
        while (left := deadline - time.monotonic()) > 0:
            try:
                flow, _peer = listener.accept(timeout=left)
            except TimeoutError:
                break
            print(f"accepted {flow.flow_id}", flush=True)
            threading.Thread(target=_dhandle, args=(flow, args.tag), daemon=True).start()
    return 0


def decho(args: argparse.Namespace) -> int:
    flow = client.connect(args.name, timeout=args.timeout, agent_socket=args.socket, datagram=True)
    print(json.dumps({"flow": flow.flow_id}), flush=True)
    replies: list[int] = []
    tags: Counter[str] = Counter()
    bad: list[str] = []
    sending = threading.Event()
    sending.set()

    def collect() -> None:
        quiet = 0.0
        while True:
            try:
                message = flow.recv(timeout=0.5)
            except TimeoutError:
                quiet = 0.0 if sending.is_set() else quiet + 0.5
                if quiet >= 2.0:
                    return
                continue
            except OSError:
                return
            if not message:
                return
            tag, _, body = message.decode().partition(":")
            tags[tag] += 1
            if body.startswith("seq "):
                replies.append(int(body[4:]))
            else:
                bad.append(message.decode(errors="replace"))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    for n in range(args.count):
        flow.send(f"seq {n}".encode())
        time.sleep(args.pace_ms / 1000)
    sending.clear()
    reader.join(timeout=10)
    flow.close()
    print(json.dumps({"sent": args.count, "replies": replies, "tags": dict(tags), "bad": bad}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)
    apps = (("serve", serve), ("hello", hello), ("send", send), ("dserve", dserve), ("decho", decho))
    for name, fn in apps:
        s = sub.add_parser(name)
        s.add_argument("name")
        s.add_argument("--socket", required=True)
        s.add_argument("--timeout", type=float, default=10.0)
        s.set_defaults(fn=fn)
        if name in ("serve", "dserve"):
            s.add_argument("--tag", required=True)
            s.add_argument("--seconds", type=float, default=60.0)
        if name in ("hello", "decho"):
            s.add_argument("--count", type=int, default=1)
        if name == "decho":
            s.add_argument("--pace-ms", type=float, default=10.0)
        if name == "send":
            s.add_argument("--bytes", type=int, required=True)
            s.add_argument("--chunk", type=int, default=1 << 16)
            s.add_argument("--pace-ms", type=float, default=0.0)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
