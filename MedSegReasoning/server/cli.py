"""``medseg-reasoning serve``: options, start-up checks in the order that fails fastest, and the ready line.

The lead's CLI hooks this in with ``add_serve_parser(subparsers)`` and ``run_serve(args)``; until then (and for
tests) ``python -m MedSegReasoning.server`` runs the same parser. FastAPI, uvicorn and the models are imported only
inside ``run_serve``, so ``medseg-reasoning --help`` stays fast.

Start-up order: the bind address (refused beyond loopback without ``--token-file``), the tokens, the models (slow;
a missing model stops here with its own message), the listening socket, then one machine-readable line on stdout::

    MEDSEG-SERVER-READY {"url": "http://127.0.0.1:41213", "port": 41213, "token_file": "...", "pid": 1234}

which is what ``MedSegReasoning.wire.process.LocalServer`` waits for (``--port 0`` picks a free port, so the line is the
only way to learn it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..wire.headers import READY_PREFIX
from .config import Limits, MiB, ServerConfig

if TYPE_CHECKING:  # uvicorn is imported when the server starts
    import uvicorn


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` command to an ``argparse`` sub-parser collection and return its parser."""
    parser = subparsers.add_parser(
        "serve",
        help="run the backend server (HTTP, token required) for Slicer or other clients",
        description="Serve the engine over HTTP: sessions, volumes, question rounds as Server-Sent Events, entities. "
        "Listens on 127.0.0.1 unless told otherwise; every call needs a token (docs/deployment.md).",
    )
    configure_serve_parser(parser)
    return parser


def configure_serve_parser(parser: argparse.ArgumentParser) -> None:
    defaults = ServerConfig()
    limits = Limits()
    parser.add_argument(
        "--host", default=defaults.host, help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=0, help="port; 0 (default) picks a free one and prints it")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file of tokens, one 'name:token' (or bare token) per line; required to listen beyond this machine. "
        "Default: a random token in the user's config folder (its path is printed)",
    )
    parser.add_argument(
        "--state-dir", type=Path, help="folder for sessions and the audit log (default: user state folder)"
    )
    parser.add_argument("--segmenter", default="litemedsam", help="segmenter spec (default: litemedsam)")
    parser.add_argument(
        "--reasoner",
        default=None,
        help="reasoner spec: hf:<folder or id>, openai:<base-url>#<model>, replay:<file>; none: prompts only",
    )
    parser.add_argument(
        "--allow-remote-reasoner", action="store_true", help="allow an openai: reasoner URL beyond loopback"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--max-sessions", type=int, default=defaults.max_sessions, help="sessions held at once")
    parser.add_argument(
        "--max-sessions-per-token",
        type=int,
        default=defaults.max_sessions_per_token,
        help="sessions one token may hold at once (default %(default)s; at most --max-sessions)",
    )
    parser.add_argument(
        "--evict-idle-minutes",
        type=float,
        default=defaults.evict_idle_s / 60,
        help="when the server or a token is at its limit, a session idle this long is closed to make room "
        "(default %(default)s; clients continue it from their archive)",
    )
    parser.add_argument(
        "--session-idle-minutes", type=float, default=defaults.session_idle_s / 60, help="close sessions idle this long"
    )
    parser.add_argument(
        "--max-upload-mb", type=int, default=limits.max_upload_bytes // MiB, help="largest volume upload, in MiB"
    )
    parser.add_argument("--max-voxels", type=int, default=limits.max_voxels, help="largest volume, in voxels")
    parser.add_argument(
        "--max-volume-mb",
        type=int,
        default=limits.max_volume_bytes // MiB,
        help="largest volume once decoded (voxels x bytes per voxel), in MiB; refused from the header (413)",
    )
    parser.add_argument(
        "--upload-budget-mb",
        type=int,
        default=defaults.upload_budget_bytes // MiB,
        help="memory all uploads in flight may use together, in MiB; beyond it an upload gets 503 + Retry-After",
    )
    parser.add_argument(
        "--reasoner-workers",
        type=int,
        default=1,
        help="concurrent reasoner calls (keep 1 for an in-process model; more for a batching server such as vLLM)",
    )
    parser.add_argument(
        "--docs-ui", action="store_true", help="serve Swagger UI at /docs (the OpenAPI JSON is always served)"
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    limits = Limits(
        max_upload_bytes=args.max_upload_mb * MiB,
        max_voxels=args.max_voxels,
        max_volume_bytes=args.max_volume_mb * MiB,
    )
    return ServerConfig(
        host=args.host,
        port=args.port,
        token_file=args.token_file,
        state_dir=args.state_dir,
        limits=limits,
        upload_budget_bytes=args.upload_budget_mb * MiB,
        max_sessions=args.max_sessions,
        max_sessions_per_token=args.max_sessions_per_token,
        session_idle_s=args.session_idle_minutes * 60,
        evict_idle_s=args.evict_idle_minutes * 60,
        reasoner_workers=args.reasoner_workers,
        device=args.device,
        docs_ui=args.docs_ui,
    )


def run_serve(args: argparse.Namespace) -> int:
    """The ``serve`` command. Raises ``MedSegError`` subclasses (the CLI prints their sentence and exit code)."""
    from ..wire.errors import InputError
    from .auth import TokenStore, ensure_default_token_file
    from .engine import Engine

    config = config_from_args(args)
    config.check_bind()
    if config.max_sessions < 1 or config.max_sessions_per_token < 1:
        raise InputError("--max-sessions and --max-sessions-per-token must be at least 1.")
    if config.port < 0 or config.port > 65535:
        raise InputError(f"--port {config.port} is not a port number (0-65535; 0 picks a free one).")
    token_path = config.token_file if config.token_file is not None else ensure_default_token_file()
    tokens = TokenStore.from_file(token_path)
    print(
        f"medseg-reasoning serve: loading models (segmenter {args.segmenter}, reasoner {args.reasoner or 'none'})",
        file=sys.stderr,
        flush=True,
    )
    engine = Engine.from_specs(
        args.segmenter, args.reasoner, device=args.device, allow_remote_reasoner=args.allow_remote_reasoner
    )
    return serve(config, engine, tokens, token_path)


def serve(
    config: ServerConfig, engine, tokens, token_path: Path | None, announce: Callable[[str], None] | None = None
) -> int:
    """Listen and serve until SIGINT/SIGTERM; ``announce`` receives the ready line (default: stdout)."""
    import uvicorn

    from .app import create_app
    from .auth import curl_example

    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    app = create_app(config, engine, tokens)
    host = f"[{config.host}]" if ":" in config.host else config.host
    ready = {
        "url": f"http://{host}:{port}",
        "port": port,
        "token_file": str(token_path) if token_path else None,
        "pid": os.getpid(),
    }

    def say_ready() -> None:
        print(
            f"medseg-reasoning serve: listening on {ready['url']}; token file {ready['token_file']}",
            file=sys.stderr,
            flush=True,
        )
        if token_path is not None:  # the token is read from the file by the shell, never printed
            print(
                f"medseg-reasoning serve: try it: {curl_example(ready['url'], token_path)}", file=sys.stderr, flush=True
            )
        (announce or _print_stdout)(READY_PREFIX + json.dumps(ready))

    server = _announcing_server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3, lifespan="on"),
        say_ready,
    )
    server.run(sockets=[sock])
    return 0


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so ``--port 0`` has its number before the ready line is printed."""
    from ..wire.errors import InputError

    name = host.strip("[]")
    try:
        family = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise InputError(f"--host {host} cannot be resolved ({exc.strerror}).") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((name, port))
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port, or 0 for a free one."
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _print_stdout(line: str) -> None:
    print(line, flush=True)


def _announcing_server(config: uvicorn.Config, on_started: Callable[[], None]) -> uvicorn.Server:
    """uvicorn's Server, announcing readiness once the application's start-up has finished."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                on_started()

    return Server(config)


def main(argv: list[str] | None = None) -> int:
    """``python -m MedSegReasoning.server``: the ``serve`` command on its own (same options)."""
    from ..wire.errors import MedSegError

    parser = argparse.ArgumentParser(prog="python -m MedSegReasoning.server", description="The MedSegReasoning server.")
    configure_serve_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except MedSegError as exc:
        print(f"medseg-reasoning serve: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
