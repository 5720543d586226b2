"""REST API under ``/api/v1``: thin handlers over the read model and the registry client.

Reads need a token (or a browser session) unless `open_reads`; actions need a
bearer token of role admin (never the session cookie: browser forms go through
the CSRF-checked page routes). Registry refusals map to HTTP: NOT_FOUND → 404,
INVALID_ARGUMENT → 400, UNAVAILABLE / DEADLINE_EXCEEDED → 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from dashboard import views
from dashboard.auth import Principal
from dashboard.state import State
from registry.api.rpc import RpcError, StatusCode
from registry.model import MAX_WEIGHT

log = logging.getLogger("serval.dashboard.api")

SESSION_COOKIE = "serval_session"
ANONYMOUS = Principal("anonymous", "none")


def state_of(request: Request) -> State:
    st: State = request.app.state.dashboard
    return st


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def reader(request: Request) -> Principal:
    """The caller of a read: bearer token, browser session, or anonymous when reads are open."""
    st = state_of(request)
    token = _bearer(request)
    if token:
        who = st.auth.principal(token)
        if who is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        return who
    session = st.auth.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    if session is not None:
        return session.principal
    if st.config.open_reads:
        return ANONYMOUS
    raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})


def admin(request: Request) -> Principal:
    """The caller of an action: a bearer token of role admin."""
    token = _bearer(request)
    if not token:
        raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    who = state_of(request).auth.principal(token)
    if who is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    if not who.is_admin:
        raise HTTPException(403, f"role {who.role} may not act")
    return who


Reader = Annotated[Principal, Depends(reader)]
Admin = Annotated[Principal, Depends(admin)]
router = APIRouter(prefix="/api/v1", tags=["v1"])


@router.get("/overview")
async def overview(request: Request, _: Reader) -> dict[str, Any]:
    st = state_of(request)
    c = st.model.counts()
    stale = st.feed.stale_for()
    return {
        "services": c.services,
        "instances": c.instances,
        "usable": c.usable,
        "drained": c.drained,
        "agents": c.agents,
        "revision": c.revision,
        "ready": st.feed.ready.is_set(),
        "stale_seconds": None if stale == float("inf") else stale,
        "propagation": st.model.propagation_window(time.time()),
    }


@router.get("/services")
async def services(
    request: Request,
    _: Reader,
    q: str = "",
    status: Annotated[str, Query(pattern="^(all|degraded|down)$")] = "all",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    return views.page(state_of(request).model.search(q, status, offset, limit))


@router.get("/services/{service}")
async def service(request: Request, service: str, _: Reader) -> dict[str, Any]:
    st = state_of(request)
    found = st.model.instances_of(service)
    if found is None:
        raise HTTPException(404, f"no instances of {service!r}")
    left = await lease_times_left(st, service)
    return {"service": service, "instances": [views.instance(i, left.get(i.lease_id)) for i in found]}


LEASE_LOOKUP_SECONDS = 1.0


async def lease_times_left(st: State, service: str) -> dict[int, int]:
    """Seconds each lease of `service`'s instances has left, by lease ID; {} when the registry
    cannot say within `LEASE_LOOKUP_SECONDS` or the feed is disconnected (the page then shows
    the TTL only, and never waits on a registry known to be away)."""
    if not st.feed.connected:
        return {}
    try:
        async with asyncio.timeout(LEASE_LOOKUP_SECONDS):
            answer = await st.client.resolve(service, with_lease_time_left=True)
    except (RpcError, TimeoutError) as e:
        log.info("lease times of %s unavailable: %s", service, e or "timed out")
        return {}
    return {i.lease_id: i.lease_time_left_seconds for i in answer.instances}


@router.get("/agents")
async def agents(request: Request, _: Reader) -> dict[str, Any]:
    st = state_of(request)
    return {"agents": views.agents(st.model, st.feed.subscriber_statuses())}


@router.get("/cluster")
async def cluster(request: Request, _: Reader) -> dict[str, Any]:
    st = state_of(request)
    return views.cluster(st.feed.status, st.feed.status_at, st.feed.status_error, st.feed.replicas.values())


@router.get("/propagation")
async def propagation(
    request: Request, _: Reader, window: Annotated[float, Query(gt=0, le=86400)] = 300
) -> dict[str, Any]:
    st = state_of(request)
    now = time.time()
    recent = st.model.recent_propagation(now, window)
    return {
        "method": "measured by each registry replica: from its view applying a revision (its etcd "
        "watch delivering the commit) to the agent reporting the change in force in its data path "
        "(the replica's send delay plus the agent's own apply delay; network transit excluded); "
        "p50/p99/max over host agents (subscribers agent/...), the table per subscriber of any kind",
        "window_seconds": window,
        **st.model.propagation_window(now, window),
        "samples_recent": [
            {
                "at": p.at,
                "seconds": p.seconds,
                "subscriber": p.subscriber,
                "replica": p.replica,
                "revision": p.revision,
            }
            for p in recent[-200:]
        ],
        "dashboard": {
            "method": "registration time carried in metadata serval.registered_at_ns → arrival on "
            "the dashboard's watch (wall clocks of the registering client and the dashboard)",
            **st.model.latency_window(now, window),
        },
    }


@router.get("/events")
async def events(
    request: Request,
    _: Reader,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return {"events": [views.event(e) for e in state_of(request).model.recent_events(after, limit)]}


@router.get("/audit")
async def audit(request: Request, _: Reader) -> dict[str, Any]:
    return {"entries": list(state_of(request).audit)}


@router.get("/events/stream", response_class=StreamingResponse)
async def event_stream(request: Request, _: Reader) -> StreamingResponse:
    """Server-sent events: ``event: change`` with the deltas (JSON), ``: ping`` every 15 s."""
    return StreamingResponse(sse(state_of(request)), media_type="text/event-stream")


async def sse(st: State, ping_every: float = 15.0) -> AsyncIterator[str]:
    sub = st.feed.subscribe()
    st.metrics.sse_clients += 1
    try:
        yield f"event: hello\ndata: {json.dumps({'revision': st.model.revision})}\n\n"
        while True:
            try:
                batch = await asyncio.wait_for(sub.queue.get(), ping_every)
            except TimeoutError:
                yield ": ping\n\n"
                continue
            payload = {"revision": st.model.revision, "dropped": sub.dropped, "events": []}
            payload["events"] = [views.event(e) for e in batch[-100:]]
            yield f"event: change\ndata: {json.dumps(payload)}\n\n"
    finally:
        st.metrics.sse_clients -= 1
        st.metrics.sse_dropped += sub.dropped
        st.feed.unsubscribe(sub)


class WeightBody(BaseModel):
    weight: int = Field(ge=1, le=MAX_WEIGHT)


async def act(st: State, who: Principal, action: str, target: str, call: Awaitable[Any]) -> dict[str, Any]:
    """Run one registry call on behalf of `who`; audit it whatever the outcome."""
    try:
        await call
    except RpcError as e:
        st.record_action(who, action, target, "refused", f"{e.code.name}: {e.details}")
        code = {StatusCode.NOT_FOUND: 404, StatusCode.INVALID_ARGUMENT: 400}.get(e.code, 503)
        raise HTTPException(code, f"{e.code.name}: {e.details}") from None
    st.record_action(who, action, target, "ok")
    return {"ok": True, "action": action, "target": target}


@router.post("/services/{service}/instances/{instance_id}/drain")
async def drain(request: Request, service: str, instance_id: str, who: Admin) -> dict[str, Any]:
    st = state_of(request)
    return await act(st, who, "drain", f"{service}/{instance_id}", st.client.drain(service, instance_id))


@router.post("/services/{service}/instances/{instance_id}/undrain")
async def undrain(request: Request, service: str, instance_id: str, who: Admin) -> dict[str, Any]:
    st = state_of(request)
    call = st.client.drain(service, instance_id, drain=False)
    return await act(st, who, "undrain", f"{service}/{instance_id}", call)


@router.post("/services/{service}/instances/{instance_id}/weight")
async def weight(
    request: Request, service: str, instance_id: str, body: WeightBody, who: Admin
) -> dict[str, Any]:
    st = state_of(request)
    call = st.client.set_weight(service, instance_id, body.weight)
    return await act(st, who, f"weight={body.weight}", f"{service}/{instance_id}", call)


@router.delete("/services/{service}/instances/{instance_id}")
async def deregister(request: Request, service: str, instance_id: str, who: Admin) -> dict[str, Any]:
    st = state_of(request)
    call = st.client.deregister(service, instance_id)
    return await act(st, who, "deregister", f"{service}/{instance_id}", call)
