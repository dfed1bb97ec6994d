"""The backend server: the engine over HTTP for Slicer seats on the workstation or a department GPU server.

- ``cli``: ``add_serve_parser`` / ``run_serve`` (the ``medseg-reasoning serve`` command) and ``serve``;
- ``app``: ``create_app(config, engine)``, the FastAPI application (assembly only); ``routes/``: its routes, one
  module per resource; ``schemas``: the request/response bodies; ``runtime``: what the routes share;
  ``streaming``: starting a round and streaming its events; ``error_handlers``: one error body for every failure;
- ``config`` / ``auth`` / ``guard`` / ``audit``: what is allowed, who may call, limits before the body, the log;
- ``sessions`` / ``rounds`` / ``workers`` / ``engine``: sessions, a round's thread and events, one queue per model;
- ``wire``: the wire format on the server's side (docs/wire-format.md);
- ``exporting``: the hook into the interop exporters (``MedSegReasoning.export``), 501 without them.

Importing this package loads neither FastAPI nor a model (``cli`` is stdlib-only until ``run_serve`` runs).
"""

from __future__ import annotations

from .cli import add_serve_parser, run_serve

__all__ = ["add_serve_parser", "run_serve"]
