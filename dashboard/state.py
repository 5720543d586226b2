"""What the dashboard's handlers share: config, model, feed, auth, audit log and counters."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard.auth import Auth, Principal
from dashboard.feed import Feed
from dashboard.model import Model
from registry.api.client import RegistryClient
from registry.exposition import Family, render

audit_log = logging.getLogger("serval.dashboard.audit")


@dataclass
class DashboardConfig:
    registry: list[str]
    listen: str = "127.0.0.1:8080"
    tokens: dict[str, Principal] = field(default_factory=dict)
    open_reads: bool = False
    audit_file: Path | None = None
    subscriber_id: str = "dashboard"
    status_interval: float = 2.0
    stale_after: float = 15.0
    secure_cookies: bool = False  # set behind TLS


@dataclass
class Metrics:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)  # (route, status)
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, result)
    sse_clients: int = 0
    sse_dropped: int = 0

    def families(self, state: State) -> list[Family]:
        c = state.model.counts()
        fams = [
            Family("serval_dashboard_requests_total", "counter", "HTTP requests by route and status"),
            Family("serval_dashboard_actions_total", "counter", "Operator actions by action and result"),
            Family("serval_dashboard_sse_clients", "gauge", "Server-sent event streams open", [((), 0)]),
            Family(
                "serval_dashboard_sse_dropped_total", "counter", "Change notices dropped for slow streams"
            ),
            Family("serval_dashboard_revision", "gauge", "Registry revision of the read model"),
            Family("serval_dashboard_instances", "gauge", "Instances in the read model"),
            Family("serval_dashboard_stale_seconds", "gauge", "Age of the data when stale, else 0"),
        ]
        fams[0].samples = [
            ((("route", r), ("status", str(s))), n) for (r, s), n in sorted(self.requests.items())
        ]
        fams[1].samples = [((("action", a), ("result", r)), n) for (a, r), n in sorted(self.actions.items())]
        fams[2].samples = [((), self.sse_clients)]
        fams[3].samples = [((), self.sse_dropped)]
        fams[4].samples = [((), c.revision)]
        fams[5].samples = [((), c.instances)]
        stale = state.feed.stale_for()
        fams[6].samples = [((), stale if stale != float("inf") else -1)]
        return fams

    def render(self, state: State) -> bytes:
        return render(self.families(state))


@dataclass
class State:
    config: DashboardConfig
    client: RegistryClient
    model: Model
    feed: Feed
    auth: Auth
    metrics: Metrics = field(default_factory=Metrics)
    audit: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))

    def record_action(self, who: Principal, action: str, target: str, result: str, detail: str = "") -> None:
        """Append one audit entry (memory, the log, the audit file); count the action."""
        entry = {
            "at": time.time(),
            "who": who.name,
            "role": who.role,
            "action": action,
            "target": target,
            "result": result,
            "detail": detail,
        }
        self.audit.append(entry)
        self.metrics.actions[(action, result)] += 1
        audit_log.info("%s", json.dumps(entry, sort_keys=True))
        if self.config.audit_file is not None:
            with self.config.audit_file.open("a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
