"""Errors both processes raise: the user-facing ``MedSegError`` family and the client's ``ClientError`` family.

``MedSegError`` and its subclasses are failures the user can act on, each tied to the exit code the CLI promises.
Every failure that reaches a user is one of these: the message is a complete sentence that says what was
wrong and what to do. The CLI prints the message alone (no traceback unless ``--debug``) and exits with
the class's ``exit_code``; the server maps the same classes to HTTP statuses. Code deeper down raises the
most specific class and never formats tracebacks itself. They live in the wire because both sides raise them
(a mask that arrives malformed is an ``InputError`` on the server and in the Slicer module alike).

``ClientError`` and its subclasses are what ``MedSegClient`` raises talking to a server: one class per thing the
user can do something about, with the HTTP ``status`` and the server's error ``code`` for code.
Standard library only.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_MODEL = 3
EXIT_SERVICE = 4
EXIT_STUDIES_FAILED = 5  # batch: the run finished, and some studies failed (their rows say why)


class MedSegError(Exception):
    """Base class: a user-facing failure with a documented exit code."""

    exit_code: int = 1


class InputError(MedSegError):
    """The input or the request is wrong, and the user can fix it (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class ModelError(MedSegError):
    """Weights missing or corrupt, or a model failed while running (exit 3)."""

    exit_code = EXIT_MODEL


class ServiceError(MedSegError):
    """An external service is unreachable or refuses the request (exit 4)."""

    exit_code = EXIT_SERVICE


# ---------------------------------------------------------------------------------------------------------------
# Talking to the server: one class per thing the user can do something about


class ClientError(Exception):
    """A failure talking to the server; ``str(error)`` is a sentence for the user, ``code``/``status`` for code."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ServerUnreachable(ClientError):
    """No server answers at the address (not started, wrong address, firewall, certificate not trusted)."""


class ServerGone(ClientError):
    """The server stopped answering in the middle of a request or a round."""


class ServerStartFailed(ClientError):
    """A local server could not be started (its own error message is included)."""


class AuthenticationFailed(ClientError):
    """The token is missing or wrong (HTTP 401)."""


class NotFound(ClientError):
    """The session or entity does not exist (any more) for this token (HTTP 404)."""


class Conflict(ClientError):
    """The request does not fit the session's state: a round is running, no volume yet... (HTTP 409)."""


class RequestRejected(ClientError):
    """The request was refused as it stands: bad input, too large, wrong type (HTTP 400, 413, 415, 422)."""


class ServerBusy(ClientError):
    """The server is full; ``retry_after`` says in how many seconds to try again (HTTP 503)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ModelUnavailable(ClientError):
    """A model the request needs is missing on the server, or failed to load."""


class RoundFailed(ClientError):
    """A round ended with an error (the model raised, the reasoner's answer was unusable...)."""


class RoundCancelled(ClientError):
    """The round was cancelled (by this client or the server) and nothing of it was kept."""


class VersionMismatch(ClientError):
    """Client and server speak no wire version in common; the message says which side to update (``wire.version``)."""


class ServerError(ClientError):
    """The server failed (HTTP 5xx); the message says what it reported."""


def error_for_status(status: int, code: str, message: str, headers: dict[str, str]) -> ClientError:
    """The ``ClientError`` for an HTTP error answer (``headers`` with lower-case names)."""
    if code == "wire_version_unsupported":
        return VersionMismatch(message, status=status, code=code)
    if status == 401:
        return AuthenticationFailed(message, status=status, code=code)
    if status == 404:
        return NotFound(message, status=status, code=code)
    if status == 409:
        return Conflict(message, status=status, code=code)
    if status == 503 and code in ("reasoner_missing", "model_missing"):
        return ModelUnavailable(message, status=status, code=code)
    if status in (429, 503):  # server full, or this token at its quota of sessions
        retry = headers.get("retry-after")
        return ServerBusy(message, status=status, code=code, retry_after=float(retry) if retry else None)
    if 400 <= status < 500:
        return RequestRejected(message, status=status, code=code)
    return ServerError(message, status=status, code=code)


def os_reason(exc: BaseException) -> str:
    """The operating system's words for a failure (``strerror``), else the exception's message or type."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
