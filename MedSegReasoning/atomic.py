"""Atomic file writes: a reader (or a crash) never sees a half-written output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    """The process umask, read once at import (reading it means setting it, which is not thread-safe later)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Outputs get the permissions any new file of the user's would get, not mkstemp's owner-only 0600.
_NEW_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_output(path: Path, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, else it is removed.

    The temporary name keeps the final suffixes (``.nii.gz``), because some writers choose the format by them.
    The file gets the permissions of any new file of the user's (umask), or owner-only with ``private`` (secrets,
    pseudonym maps), whatever the writer did meanwhile.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=f".partial{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o600 if private else _NEW_FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def staged_outputs(out_dir: Path) -> Iterator[Path]:
    """Write a set of outputs into a hidden staging folder, then move each into ``out_dir`` only if all succeeded.

    A failure half-way (a writer raising, Ctrl+C) leaves every file already in ``out_dir`` as it was.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            os.replace(item, out_dir / item.name)
    finally:
        for item in staging.iterdir():
            item.unlink()
        staging.rmdir()
