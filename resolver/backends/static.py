"""The static back-end: services listed in a TOML file, reloaded when the file changes.

File format (UTF-8 TOML, read with `tomllib`)::

    [[service]]
    name = "web.shop.example"          # normalised with registry.names.normalize

    [[service.instance]]
    id = "web-1"                       # 1..128 of [A-Za-z0-9._:-], unique per service
    addresses = ["10.0.0.5", "fd00::5"]
    port = 8080                        # 1..65535
    weight = 100                       # optional, 0..10000 (0 = drained), default 100
    tier = 0                           # optional, 0..15 (lower = preferred), default 0
    zone = "a"                         # optional
    region = "eu"                      # optional
    metadata = { "serval.sal_port" = "7000" }   # optional, string values

Every field is checked by the registry's own rules (`registry.model.validate_instance`);
unknown keys are errors (a typo must not silently drop a setting). A service may be
listed once; a service with no instance is allowed (and published empty).

Reload contract: `run()` polls the file's (mtime, size, inode) every `interval`
seconds and re-reads it when any changed (an atomic rename counts). A file that is
missing, unreadable or invalid keeps the last good state; the error is reported in
`snapshot().error` and logged once per distinct error; the next good file clears it.
Pure core: `parse(text, source)`; the shell only stats, reads and publishes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry import names
from registry.errors import InvalidArgument
from registry.model import Instance, validate_instance
from resolver.backends.registry import endpoint_from_instance
from resolver.backends.state import Published, PublishingBackend, group
from resolver.model import Endpoint

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 2.0
_SERVICE_KEYS = {"name", "instance"}
_INSTANCE_KEYS = {"id", "addresses", "port", "weight", "tier", "zone", "region", "metadata"}


class StaticError(ValueError):
    """The file cannot be used; the message says where and why."""


def parse(text: str, source: str = "static") -> dict[str, tuple[Endpoint, ...]]:
    """The services of a static file's `text`, or raise `StaticError`. Pure."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StaticError(f"TOML syntax: {e}") from None
    unknown = set(doc) - {"service"}
    if unknown:
        raise StaticError(f"unknown top-level keys: {sorted(unknown)}")
    services = doc.get("service", [])
    if not isinstance(services, list):
        raise StaticError("'service' must be an array of tables ([[service]])")
    endpoints: list[Endpoint] = []
    seen: set[str] = set()
    for n, entry in enumerate(services, 1):
        name, found = _service(entry, n, source)
        if name in seen:
            raise StaticError(f"service {name!r} is listed twice")
        seen.add(name)
        endpoints.extend(found)
    out = group(endpoints)
    for name in seen:
        out.setdefault(name, ())
    return dict(sorted(out.items()))


def _service(entry: Any, n: int, source: str) -> tuple[str, list[Endpoint]]:
    where = f"service #{n}"
    if not isinstance(entry, dict):
        raise StaticError(f"{where}: must be a table")
    _check_keys(entry, _SERVICE_KEYS, where)
    raw_name = entry.get("name")
    if not isinstance(raw_name, str):
        raise StaticError(f"{where}: 'name' (a string) is required")
    try:
        name = names.normalize(raw_name)
    except names.InvalidName as e:
        raise StaticError(f"{where}: {e}") from None
    instances = entry.get("instance", [])
    if not isinstance(instances, list):
        raise StaticError(f"service {name!r}: 'instance' must be an array of tables")
    ids: set[str] = set()
    out = []
    for m, raw in enumerate(instances, 1):
        endpoint = _instance(raw, name, f"service {name!r} instance #{m}", source)
        if endpoint.instance_id in ids:
            raise StaticError(f"service {name!r}: instance id {endpoint.instance_id!r} is listed twice")
        ids.add(endpoint.instance_id)
        out.append(endpoint)
    return name, out


def _instance(raw: Any, service: str, where: str, source: str) -> Endpoint:
    if not isinstance(raw, dict):
        raise StaticError(f"{where}: must be a table")
    _check_keys(raw, _INSTANCE_KEYS, where)
    try:
        instance = Instance(
            service=service,
            instance_id=_typed(raw, "id", str, where),
            addresses=tuple(_typed(raw, "addresses", list, where)),
            port=_typed(raw, "port", int, where),
            weight=_typed(raw, "weight", int, where, 100),
            tier=_typed(raw, "tier", int, where, 0),
            zone=_typed(raw, "zone", str, where, ""),
            region=_typed(raw, "region", str, where, ""),
            metadata=_metadata(raw.get("metadata", {}), where),
        )
        if not all(isinstance(a, str) for a in instance.addresses):
            raise StaticError(f"{where}: 'addresses' must be strings")
        return endpoint_from_instance(validate_instance(instance), source)
    except InvalidArgument as e:
        raise StaticError(f"{where}: {e}") from None


def _typed(raw: Mapping[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = raw.get(key, default)
    if value is None:
        raise StaticError(f"{where}: {key!r} is required")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StaticError(f"{where}: {key!r} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _metadata(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise StaticError(f"{where}: 'metadata' must be a table of strings")
    return dict(value)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise StaticError(f"{where}: unknown keys {sorted(unknown)}")


FileStamp = tuple[int, int, int]  # (mtime_ns, size, inode)


class StaticBackend(PublishingBackend):
    """Serves the services of the TOML file at `path`, polled every `interval` seconds."""

    def __init__(
        self, path: str | os.PathLike[str], *, name: str = "static", interval: float = DEFAULT_INTERVAL
    ) -> None:
        if interval <= 0:
            raise ValueError("the static back-end's poll interval must be positive")
        self.name = name
        self.path = Path(path)
        self.interval = interval
        self._state = Published(name)
        self._stamp: FileStamp | None = None
        self._logged_error = ""

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(self.interval)

    def poll(self) -> None:
        """Reload the file if its stamp changed (called by `run`; callable directly)."""
        try:
            st = self.path.stat()
        except OSError as e:
            self._stamp = None
            self._fail(f"{self.path}: {e.strerror or e}")
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            services = parse(self.path.read_text(encoding="utf-8"), self.name)
        except (OSError, UnicodeDecodeError, StaticError) as e:
            self._fail(f"{self.path}: {e}")
            return
        self._logged_error = ""
        if self._state.publish(services):
            log.info("%s: loaded %s (%d services)", self.name, self.path, len(services))

    def _fail(self, error: str) -> None:
        if error != self._logged_error:
            log.warning("%s: keeping the last good state: %s", self.name, error)
            self._logged_error = error
        self._state.set_error(error)
