"""Bearer tokens: one per user, read from a file, compared in constant time.

Why a file of ``name:token`` lines and not accounts: a department server needs to know *who* asked (the audit log
records the token's name) and to withdraw one user's access without touching the others (delete the line,
restart), and nothing more. A single-user workstation needs one token that only that user can read: without
``--token-file`` a random one is made in the user's config folder, mode 0600, and reused by later starts so a
Slicer session and a server it started agree on it.
"""

from __future__ import annotations

import hmac
import os
import secrets
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from ..wire.errors import InputError
from .config import user_config_dir

MIN_TOKEN_CHARS = 16
DEFAULT_TOKEN_FILE_NAME = "server-token"


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes


class TokenStore:
    """The tokens a server accepts; ``identify`` returns the token's name, or None."""

    def __init__(self, tokens: list[Token], source: Path | None = None) -> None:
        if not tokens:
            raise InputError(f"the token file {source} holds no token: write one 'name:token' per line.")
        self.tokens = tuple(tokens)
        self.source = source

    @classmethod
    def from_file(cls, path: Path) -> TokenStore:
        """Parse ``path``: ``name:token`` or a bare ``token`` per line; blank lines and ``#`` comments skipped."""
        path = Path(path).expanduser()
        refuse_if_others_can_read(path)
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise InputError(f"the token file {path} cannot be read ({exc.strerror}): check the path.") from None
        tokens: list[Token] = []
        names: set[str] = set()
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, secret = line.partition(":")
            if not sep:
                name, secret = f"token{number}", line
            name, secret = name.strip(), secret.strip()
            if not name or not all(c.isalnum() or c in "-_.@" for c in name):
                raise InputError(
                    f"line {number} of the token file {path}: the name {name!r} must be letters, digits or -_.@ only."
                )
            if len(secret) < MIN_TOKEN_CHARS or any(c.isspace() for c in secret):
                raise InputError(
                    f"line {number} of the token file {path}: a token needs at least {MIN_TOKEN_CHARS} characters "
                    'and no spaces (make one with: python -c "import secrets; print(secrets.token_urlsafe(32))").'
                )
            if name in names:
                raise InputError(f"line {number} of the token file {path}: the name {name!r} is used twice.")
            names.add(name)
            tokens.append(Token(name, secret.encode("utf-8")))
        return cls(tokens, path)

    def identify(self, presented: str | None) -> str | None:
        """The name of the token ``presented``, or None. Every token is compared, each in constant time."""
        if not presented:
            return None
        given = presented.encode("utf-8", "surrogateescape")
        found: str | None = None
        for token in self.tokens:
            if hmac.compare_digest(given, token.secret):
                found = token.name
        return found

    def hint(self, presented: str | None) -> str | None:
        """Why a refused token may have been refused, when the mistake is recognisable: the whole ``name:token``
        line of the token file sent instead of its token. Says nothing about any token's value."""
        if not presented or ":" not in presented:
            return None
        name, _, rest = presented.partition(":")
        if self.identify(rest.strip()) is not None:
            return (
                f"the token carries the name prefix '{name}:' from the token file's 'name:token' line: "
                "send only the part after the first ':'"
            )
        return (
            "the token contains ':' like a whole 'name:token' line of the token file: "
            "send only the part after the first ':'"
        )


def shell_token_expression(path: Path) -> str:
    """A shell expression (``$(...)``) that reads the first token of ``path``, so a ready-to-paste command can use
    the token without the token itself ever being printed."""
    quoted = shlex.quote(str(path))
    try:
        lines = Path(path).expanduser().read_text("utf-8").splitlines()
    except OSError:
        return f"$(cut -d: -f2- {quoted})"
    meaningful = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    first = meaningful[0] if meaningful else ""
    if len(lines) == 1 and ":" in first:
        return f"$(cut -d: -f2- {quoted})"
    if ":" in first:
        name = first.partition(":")[0].strip().replace(".", "\\.")
        return f"$(grep -m1 '^{name}:' {quoted} | cut -d: -f2-)"
    return f"$(grep -m1 -v -e '^#' -e '^[[:space:]]*$' {quoted})"


def curl_example(url: str, token_file: Path) -> str:
    """A ``curl`` line that asks the server for its health, with the token read from the file at run time."""
    return f'curl -H "Authorization: Bearer {shell_token_expression(token_file)}" {url}/v1/health'


def default_token_file() -> Path:
    return user_config_dir() / DEFAULT_TOKEN_FILE_NAME


def ensure_default_token_file(path: Path | None = None) -> Path:
    """The default token file, created with a fresh random token (mode 0600) when absent; refused if others can read it."""
    path = Path(path) if path is not None else default_token_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = secrets.token_urlsafe(32)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:  # another server started at the same moment: use its token
            return path
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"local:{secret}\n")
    refuse_if_others_can_read(path, made_here=True)
    return path


def refuse_if_others_can_read(path: Path, *, made_here: bool = False) -> None:
    """Refuse (exit 2) a token file that users other than its owner may read or write: whoever reads it can act
    as every user in it. The message is the ``chmod`` that fixes it (docs/deployment.md). POSIX only."""
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # the read that follows says why the file cannot be used
    if mode & 0o077:
        fix = ", or delete it to have a new one made." if made_here else "."
        raise InputError(
            f"the token file {path} can be read by other users (mode {mode:03o}): run chmod 600 {path}{fix}"
        )
