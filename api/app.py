"""The HTTP application: routes, auth, errors and metrics around one wiring."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import Depends, FastAPI

from eventkeep.api import graphql, headers
from eventkeep.api.admission import Admission, AdmissionGate
from eventkeep.api.admission_protocol import STATE_KEY, Refusals
from eventkeep.api.auth import KeyBeforeBody
from eventkeep.api.bootstrap import Wiring, wire
from eventkeep.api.correlation import CorrelationId
from eventkeep.api.errors import LastResortErrors, install_error_handlers
from eventkeep.api.fast_reads import FastReads
from eventkeep.api.headers import SecurityHeaders
from eventkeep.api.lean_commands import LeanCommands, lean_routes
from eventkeep.api.limits import Limits, RequestLimits, known_query_parameters
from eventkeep.api.metrics import Metrics, RequestMetrics
from eventkeep.api.routes import (
    analyst,
    audit,
    customers,
    ops,
    orders,
    products,
    stream,
    users,
    webhooks,
)
from eventkeep.api.settings import Settings
from eventkeep.heap import freeze_startup_heap

# Cache connections a served worker opens before its first request (R1: 8 connections).
WARM_CACHE_CONNECTIONS = 8


def create_app(
    config: Settings | Wiring | None = None, *, serving: bool = False, lean_commands: bool = True
) -> FastAPI:
    """Builds the app on `config`: settings (read from the environment when None) are wired
    here and closed at shutdown; a ready wiring stays its caller's to close. `serving` (an
    `eventkeep serve` worker, `serve_app`): at startup the cache's connections are opened,
    then what the process holds is left out of the garbage collector's passes.
    `lean_commands=False` leaves every command to its full route (the tests' reference)."""
    owned = not isinstance(config, Wiring)
    settings: Settings | None = None
    if isinstance(config, Wiring):
        wiring = config
    else:
        settings = config or Settings()
        wiring = wire(settings)

    gate = AdmissionGate(wiring.max_in_flight)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Refusals]]:
        if serving:
            # Each new TLS connection to Redis cost its worker's event loop 40-250 ms (R1's
            # first second); opened here, before the worker takes requests.
            await wiring.queries.cache.warm_async(WARM_CACHE_CONNECTIONS)
            # A full collection walks every object the process holds (about 140k after
            # startup: the app, its models, the libraries) with the event loop stopped: R1's
            # 100-500 ms stalls of every connection at once (eventkeep/heap.py).
            freeze_startup_heap()
        # The server's connections refuse at the limit too (api/admission_protocol.py).
        yield {STATE_KEY: Refusals(gate)}
        if owned:
            wiring.close()

    app = FastAPI(
        title="eventkeep",
        version=version("eventkeep"),
        summary="Commands, queries and history of a shop's users, products and orders.",
        lifespan=lifespan,
        docs_url=None,  # served by api/headers.py from the package, under a strict CSP
        redoc_url=None,
        dependencies=[Depends(known_query_parameters)],
        # Metrics are Prometheus's (eventkeep/metrics.py). FastAPI's OpenTelemetry layer, on by
        # default, asks the global providers (environment reads) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.wiring = wiring
    app.state.metrics = Metrics()
    install_error_handlers(app)
    routes = (users, customers, products, orders, analyst, audit, stream, ops, webhooks)
    for module in (*routes, headers):
        app.include_router(module.router)
    app.include_router(graphql.router)  # product queries; commands stay REST
    # The last added runs first: metrics see every answer, with its correlation id, even
    # the 500s that LastResortErrors makes of unexpected exceptions.
    # Innermost: by-id reads and product searches answered before routing (api/fast_reads.py),
    # and the hot commands sent before it (api/lean_commands.py).
    app.add_middleware(FastReads)
    if lean_commands:
        app.add_middleware(LeanCommands, routes=lean_routes(app))
    app.add_middleware(LastResortErrors)
    # Limits and the key are checked before a byte of a body is read.
    app.add_middleware(KeyBeforeBody)
    app.add_middleware(RequestLimits, limits=Limits.of(settings))
    app.add_middleware(SecurityHeaders)
    app.add_middleware(CorrelationId)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    # Outermost: at its limit of requests in flight a process refuses more at once (503,
    # Retry-After), before any other layer spends time on them.
    app.add_middleware(Admission, gate=gate)
    return app


def serve_app() -> FastAPI:
    """`eventkeep serve`'s factory, called in each worker: the app from the environment, its
    cache connections opened and its startup heap frozen once it started."""
    return create_app(serving=True)
