"""The backend set-up's status line (``State``, ``Status``) and its two ways to stop (``Cancelled``, ``SetupFailed``),
shared by the set-up steps (``child_process``, ``pip_install``, ``device``) and ``BackendSetup``."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class State(str, enum.Enum):
    """What the status line says the backend is doing."""

    NOT_INSTALLED = "not-installed"
    INSTALLING = "installing"
    STARTING = "starting"
    LOADING_MODEL = "loading-model"
    READY = "ready"
    ERROR = "error"


@dataclass(frozen=True)
class Status:
    """One status line: the state, what is happening, and (for errors and missing installs) what the user can do."""

    state: State
    message: str
    action: str = ""
    fraction: float | None = None

    def line(self) -> str:
        text = self.message
        if self.fraction is not None:
            text += f" ({self.fraction * 100:.0f}%)"
        return f"{text} {self.action}".strip()


StatusCallback = Callable[[Status], None]


class Cancelled(Exception):
    """The user cancelled; the child process and everything it started were killed."""


class SetupFailed(Exception):
    """A set-up step failed; ``str()`` says what happened and what to do, ``log`` is the full log file."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log
