"""`create_app(config)`: the dashboard's FastAPI application.

The lifespan opens the registry client and starts the feed (watch + status
poll); it closes both on shutdown. Routes: the REST API (`dashboard.api`),
the pages (`dashboard.pages`), ``/metrics`` (Prometheus text, the dashboard's
own `serval_dashboard_…`) and ``/healthz`` (200 once the first snapshot is in
and the data is not stale, else 503).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from dashboard import api, pages
from dashboard.auth import Auth
from dashboard.feed import Feed
from dashboard.model import Model
from dashboard.state import DashboardConfig, State
from registry import __version__
from registry.api.client import RegistryClient
from registry.exposition import CONTENT_TYPE

STATIC = Path(__file__).parent / "static"


def create_app(config: DashboardConfig, client: RegistryClient | None = None) -> FastAPI:
    """The app; it owns `client` (closed on shutdown) or opens one to `config.registry`."""
    reg = client or RegistryClient(config.registry, timeout=5)
    model = Model()
    feed = Feed(reg, model, config.subscriber_id, config.status_interval, config.stale_after)
    state = State(config, reg, model, feed, Auth(dict(config.tokens), config.open_reads))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        feed.start()
        try:
            yield
        finally:
            await feed.stop()
            await reg.close()

    app = FastAPI(title="Serval dashboard", version=__version__, lifespan=lifespan)
    app.state.dashboard = state
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        state.metrics.requests[(path, response.status_code)] += 1
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(state.metrics.render(state), media_type=CONTENT_TYPE)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        stale = feed.stale_for()
        ok = feed.ready.is_set() and stale == 0
        body = {
            "ok": ok,
            "ready": feed.ready.is_set(),
            "stale_seconds": None if stale == float("inf") else stale,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
