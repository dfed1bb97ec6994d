"""``create_app(config, engine)``: the FastAPI application of ``medseg-reasoning serve``.

This file only assembles the application: the shared state (``runtime.py``), the error handlers
(``error_handlers.py``), the routes, one module per resource (``routes/``), with their bodies in ``schemas.py``, and
the guard in front of them all. Routes are thin: they parse, check ownership and state, and hand work to the pieces
that own it (``sessions``, ``rounds``, ``streaming``, ``wire``, the engine's dialogue). The wire format is documented
once, in docs/wire-format.md; the generated OpenAPI (``GET /openapi.json``, token required like every other call)
documents the same routes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from fastapi.security import HTTPBearer

from .. import __version__
from ..wire.errors import InputError
from .auth import TokenStore
from .config import ServerConfig
from .engine import Engine
from .error_handlers import install_error_handlers
from .guard import Guard
from .routes import add_routes
from .runtime import Runtime, models, sweep

_bearer_scheme = HTTPBearer(auto_error=False, description="A token from the server's token file (name:token lines).")


def create_app(config: ServerConfig, engine: Engine, tokens: TokenStore | None = None) -> FastAPI:
    """The application; ``tokens`` default to ``config.token_file`` (which must then be set)."""
    if tokens is None:
        if config.token_file is None:
            raise InputError("create_app needs tokens: pass a TokenStore or set ServerConfig.token_file.")
        tokens = TokenStore.from_file(config.token_file)
    rt = Runtime(config, engine, tokens)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(sweep(rt))
        rt.audit.record("server.start", None, model=models(engine))
        try:
            yield
        finally:
            sweeper.cancel()
            rt.audit.record("server.stop", None)
            rt.shutdown()

    app = FastAPI(
        title="MedSegReasoning server",
        version=__version__,
        summary="Reasoning segmentation of medical volumes: sessions, volumes, rounds (SSE), entities.",
        description="Every call needs `Authorization: Bearer <token>`. Wire format: docs/wire-format.md. "
        "Research use only, not for diagnosis.",
        lifespan=lifespan,
        dependencies=[Depends(_bearer_scheme)],  # documents the bearer token; the Guard has already checked it
        docs_url="/docs" if config.docs_ui else None,
        redoc_url=None,
    )
    app.state.runtime = rt
    install_error_handlers(app)
    add_routes(app, rt)
    app.add_middleware(Guard, tokens=tokens, limits=config.limits, audit=rt.audit)
    return app
