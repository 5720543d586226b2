"""HTML pages (Jinja2, server-rendered) and the CSRF-checked browser forms.

Every page renders its whole `<main>` on the server; `static/live.js` listens
on the SSE stream and, on a change, refetches the page and swaps `<main>`.
Forms: the session cookie (``HttpOnly; SameSite=Strict``) names the operator;
each form carries the session's CSRF token, checked before any action.
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from dashboard import api, views
from dashboard.auth import Principal, Session
from dashboard.state import State

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)


def _session(request: Request) -> Session | None:
    return api.state_of(request).auth.sessions.get(request.cookies.get(api.SESSION_COOKIE, ""))


def _render(request: Request, name: str, **ctx: Any) -> Response:
    st = api.state_of(request)
    session = _session(request)
    if session is None and not st.config.open_reads:
        return RedirectResponse("/login", status_code=303)
    stale = st.feed.stale_for()
    ctx.update(
        session=session,
        counts=st.model.counts(),
        ready=st.feed.ready.is_set(),
        stale=None if stale == 0 else ("never connected" if stale == float("inf") else f"{stale:.0f} s"),
    )
    return templates.TemplateResponse(request, name, ctx)


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    st = api.state_of(request)
    return _render(
        request,
        "overview.html",
        latency=st.model.propagation_window(time.time()),
        cluster=views.cluster(
            st.feed.status, st.feed.status_at, st.feed.status_error, st.feed.replicas.values()
        ),
        events=[views.event(e) for e in st.model.recent_events(limit=10)][::-1],
    )


@router.get("/services", response_class=HTMLResponse)
async def services(request: Request, q: str = "", status: str = "all", offset: int = 0) -> Response:
    status = status if status in ("all", "degraded", "down") else "all"
    page = api.state_of(request).model.search(q, status, max(0, offset), 50)
    return _render(request, "services.html", page=page, q=q, status=status)


@router.get("/services/{service}", response_class=HTMLResponse)
async def service(request: Request, service: str) -> Response:
    st = api.state_of(request)
    found = st.model.instances_of(service) or []
    left = await api.lease_times_left(st, service) if found else {}
    instances = [views.instance(i, left.get(i.lease_id)) for i in found]
    return _render(request, "service.html", service=service, instances=instances)


@router.get("/agents", response_class=HTMLResponse)
async def agents(request: Request) -> Response:
    st = api.state_of(request)
    return _render(request, "agents.html", agents=views.agents(st.model, st.feed.subscriber_statuses()))


@router.get("/propagation", response_class=HTMLResponse)
async def propagation(request: Request) -> Response:
    st = api.state_of(request)
    now = time.time()
    samples = [(p.at, p.seconds) for p in st.model.recent_propagation(now, 300, agents_only=True)]
    return _render(
        request,
        "propagation.html",
        propagation=st.model.propagation_window(now),
        chart=svg_chart(samples, now),
        dashboard_latency=st.model.latency_window(now),
    )


@router.get("/events", response_class=HTMLResponse)
async def events(request: Request) -> Response:
    st = api.state_of(request)
    return _render(request, "events.html", events=[views.event(e) for e in st.model.recent_events()][::-1])


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"error": ""})


@router.post("/login")
async def login(request: Request, token: str = Form(...)) -> Response:
    st = api.state_of(request)
    made = st.auth.login(token)
    if made is None:
        return templates.TemplateResponse(request, "login.html", {"error": "unknown token"}, status_code=401)
    sid, _ = made
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(
        api.SESSION_COOKIE, sid, httponly=True, samesite="strict", secure=st.config.secure_cookies
    )
    return resp


@router.post("/logout")
async def logout(request: Request, csrf: str = Form("")) -> Response:
    session = _session(request)
    if session is not None and hmac.compare_digest(session.csrf, csrf):
        api.state_of(request).auth.logout(request.cookies.get(api.SESSION_COOKIE, ""))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(api.SESSION_COOKIE)
    return resp


def _form_admin(request: Request, csrf: str) -> Principal:
    session = _session(request)
    if session is None:
        raise HTTPException(401, "log in first")
    if not hmac.compare_digest(session.csrf, csrf):
        raise HTTPException(403, "bad CSRF token")
    if not session.principal.is_admin:
        raise HTTPException(403, f"role {session.principal.role} may not act")
    return session.principal


@router.post("/ui/services/{service}/instances/{instance_id}/{action}")
async def form_action(
    request: Request,
    service: str,
    instance_id: str,
    action: str,
    csrf: str = Form(""),
    weight: int = Form(0),
) -> Response:
    who = _form_admin(request, csrf)
    st: State = api.state_of(request)
    client = st.client
    calls = {
        "drain": lambda: client.drain(service, instance_id),
        "undrain": lambda: client.drain(service, instance_id, drain=False),
        "weight": lambda: client.set_weight(service, instance_id, weight),
    }
    if action not in calls:
        raise HTTPException(404, f"no action {action!r}")
    name = f"weight={weight}" if action == "weight" else action
    await api.act(st, who, name, f"{service}/{instance_id}", calls[action]())  # audits, maps errors
    return RedirectResponse(f"/services/{service}", status_code=303)


def svg_chart(samples: list[tuple[float, float]], now: float, width: int = 720, height: int = 200) -> str:
    """A server-drawn SVG: latency (ms) of each sample over the last 300 s."""
    top = max([s for _, s in samples] + [0.001]) * 1000
    pts = " ".join(
        f"{(at - (now - 300)) / 300 * width:.1f},{height - s * 1000 / top * (height - 10):.1f}"
        for at, s in samples
    )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="propagation latency">'
        f'<rect width="{width}" height="{height}" fill="#fafafa" stroke="#ccc"/>'
        f'<text x="4" y="12" font-size="10">{top:.1f} ms</text>'
        f'<text x="4" y="{height - 4}" font-size="10">0 ms, last 300 s</text>'
        f'<polyline fill="none" stroke="#2a6" stroke-width="1.5" points="{pts}"/></svg>'
    )
