"""The API's routes, one module per resource; ``add_routes`` registers them all on the app.

Routes are thin: they parse, check ownership and state, and hand work to the pieces that own it (``sessions``,
``rounds``, ``refine``, ``streaming``, ``wire``, ``exporting``, the engine's dialogue).
"""

from __future__ import annotations

from fastapi import FastAPI

from ..runtime import Runtime
from . import entities, exports, rounds, service, sessions


def add_routes(app: FastAPI, rt: Runtime) -> None:
    """Every route, in the order the OpenAPI document has always listed them (the rounds listing sits between
    the session routes and the export, the rounds' own routes after it)."""
    service.add_routes(app, rt)
    sessions.add_routes(app, rt)
    rounds.add_listing(app, rt)
    exports.add_routes(app, rt)
    rounds.add_routes(app, rt)
    entities.add_routes(app, rt)
