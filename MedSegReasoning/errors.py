"""Errors the user can act on, each tied to the exit code the CLI promises.

Every failure that reaches a user is one of these: the message is a complete sentence that says what was
wrong and what to do. The CLI prints the message alone (no traceback unless ``--debug``) and exits with
the class's ``exit_code``; the server maps the same classes to HTTP statuses. Code deeper down raises the
most specific class and never formats tracebacks itself.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_MODEL = 3
EXIT_SERVICE = 4


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
