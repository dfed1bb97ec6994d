"""``GET /v1/health`` and ``GET /v1/capabilities``: liveness and load, and what this server can do."""

from __future__ import annotations

import platform
import sys

from fastapi import FastAPI, Request

from ... import __version__
from ...wire.version import MIN_WIRE_VERSION, WIRE_VERSION
from ..exporting import find_exporter
from ..runtime import Runtime
from ..schemas import API, ERRORS


def add_routes(app: FastAPI, rt: Runtime) -> None:
    @app.get(f"{API}/health", tags=["service"], responses=ERRORS)
    def health(request: Request) -> dict:
        """Liveness and load: the queues in front of each model, and how many sessions are open."""
        return {
            "status": "ok",
            "version": __version__,
            "sessions": len(rt.store),
            "queues": {name: worker.queued for name, worker in rt.workers.items()},
        }

    @app.get(f"{API}/capabilities", tags=["service"], responses=ERRORS)
    def capabilities(request: Request) -> dict:
        """The models in use (with versions), the device, the limits, and what the server can do."""
        exporter = find_exporter()
        return {
            "wire_version": WIRE_VERSION,
            "wire_versions": {"min": MIN_WIRE_VERSION, "max": WIRE_VERSION},
            "server": {"medseg_reasoning": __version__, "python": platform.python_version(), "torch": _torch_version()},
            "device": rt.engine.device,
            "reasoner": rt.engine.reasoner_identity(),
            "segmenter": rt.engine.segmenter_identity(),
            "limits": {
                **rt.config.limits.to_dict(),
                "max_sessions": rt.config.max_sessions,
                "session_idle_s": rt.config.session_idle_s,
            },
            "encodings": ["identity", "deflate", "gzip"],
            "export": {"available": exporter is not None, "formats": list(exporter.formats) if exporter else []},
            "events": ["progress", "reasoning", "target", "error", "done"],
        }


def _torch_version() -> str | None:
    torch = sys.modules.get("torch")  # only if a model loaded it: never import torch just to report it
    return getattr(torch, "__version__", None)
