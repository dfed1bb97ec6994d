"""Every failure the server reports: an HTTP status, a stable machine code, and one human sentence.

The JSON body is always ``{"error": {"status": 413, "code": "body_too_large", "message": "..."}}``, for a refused
request and, inside a round's event stream, for a round that failed after the stream had started (the ``error``
event carries the status the request would have had). Clients branch on ``code``; users read ``message``.

The engine's own errors (``MedSegReasoning.wire.errors``) map by class: the user's input is wrong (400), a model is
missing or failed (500; 503 when it is missing), an upstream service such as a remote reasoner refused (502).
"""

from __future__ import annotations

import json

from ..wire.errors import InputError, MedSegError, ModelError, ServiceError


class ApiError(Exception):
    """A refusal with its status, code and message (and optional headers such as ``Retry-After``)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def to_dict(self) -> dict:
        return {"status": self.status, "code": self.code, "message": self.message}


class RoundCancelled(MedSegError):
    """The round was cancelled (client gone, cancel endpoint, server stopping); nothing of it was kept."""

    exit_code = 130


def not_found(what: str, message: str) -> ApiError:
    return ApiError(404, f"{what}_not_found", message)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def from_engine_error(exc: BaseException, during: str = "") -> ApiError:
    """The ``ApiError`` for an exception raised by the engine (``during``: e.g. 'the round', for the message)."""
    if isinstance(exc, ApiError):
        return exc
    where = f" during {during}" if during else ""
    if isinstance(exc, InputError):
        return ApiError(400, "invalid_input", _sentence(str(exc)))
    if isinstance(exc, ServiceError):
        return ApiError(502, "service_failed", _sentence(str(exc)))
    if isinstance(exc, ModelError):
        return ApiError(500, "model_failed", f"a model failed{where}: {_sentence(str(exc))}")
    if isinstance(exc, MedSegError):
        return ApiError(500, "engine_failed", _sentence(str(exc)))
    if isinstance(exc, MemoryError):
        return ApiError(503, "out_of_memory", f"the server ran out of memory{where}: try again with fewer sessions.")
    return ApiError(
        500,
        "internal_error",
        f"unexpected internal error{where} ({type(exc).__name__}: {exc}); the server keeps running, "
        "and nothing of the failed request was kept.",
    )


def error_body(error: ApiError) -> bytes:
    return json.dumps({"error": error.to_dict()}).encode("utf-8")


def _sentence(text: str) -> str:
    text = text.strip() or "no detail was given"
    return text if text.endswith((".", "!", "?")) else text + "."
