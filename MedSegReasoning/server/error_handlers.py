"""How every failure reaches the client: one JSON error body (``errors.error_body``) for API errors, engine input
errors, schema mismatches, unknown endpoints and anything unexpected."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..wire.errors import InputError
from .errors import ApiError, error_body, from_engine_error


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> Response:
        return error_response(from_engine_error(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # not JSON at all: a different mistake from a JSON of wrong shape
            return error_response(invalid_json((first.get("ctx") or {}).get("error") or "it cannot be parsed"))
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = first.get("msg", "invalid").rstrip(".")
        return error_response(
            ApiError(
                422, "invalid_body", f"the request body does not match the API: {where}: {message} (see /openapi.json)."
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):  # FastAPI's words for bytes not UTF-8
            return error_response(invalid_json("it is not UTF-8 text"))
        texts = {
            404: "there is no such endpoint: see /openapi.json for the API.",
            405: "this endpoint does not take that method.",
        }
        fallback = "invalid_request" if exc.status_code < 500 else "internal_error"
        code = {404: "no_such_endpoint", 405: "method_not_allowed"}.get(exc.status_code, fallback)
        text = texts.get(exc.status_code, str(exc.detail).rstrip(".") + ".")
        return error_response(ApiError(exc.status_code, code, text))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return error_response(from_engine_error(exc))


def invalid_json(reason: str) -> ApiError:
    """400 ``invalid_json``: the body is not JSON at all (docs/wire-format.md)."""
    return ApiError(
        400,
        "invalid_json",
        f"the request body is not valid JSON ({reason}): send a JSON object with Content-Type: application/json "
        "(see /openapi.json).",
    )


def error_response(error: ApiError) -> Response:
    return Response(error_body(error), status_code=error.status, media_type="application/json", headers=error.headers)
