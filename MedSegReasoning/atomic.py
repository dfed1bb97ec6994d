"""Atomic file writes: a reader (or a crash) never sees a half-written output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .wire.errors import InputError


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
    """Write a set of outputs into a hidden staging folder, then move them into ``out_dir`` all or nothing.

    A failure half-way (a writer raising, Ctrl+C) leaves every file already in ``out_dir`` as it was. The move
    itself is one file at a time, so each file it replaces is first put aside in the staging folder, and if any
    later move fails, the new files are taken out again and the old ones put back (``--force`` replaces a
    result, it never leaves half of a new one over half of an old one). Files of other names are never touched.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    keep = False
    try:
        yield staging
        _replace_all(staging, out_dir)
    except _NotRestored:
        keep = True  # it holds earlier outputs that could not be put back
        raise
    finally:
        if not keep:
            shutil.rmtree(staging, ignore_errors=True)


STAGING_PREFIX = ".staging-"


class _NotRestored(OSError):
    """Putting an earlier output back failed too: its copy in the staging folder must not be deleted."""


def _replace_all(staging: Path, out_dir: Path) -> None:
    """Move every file of ``staging`` into ``out_dir``; on any failure, restore ``out_dir`` exactly as it was and
    raise. Should even putting a file back fail, ``_NotRestored`` says where the earlier file is kept."""
    items = sorted(staging.iterdir())
    for item in items:
        target = out_dir / item.name
        if target.is_dir() and not target.is_symlink():
            raise InputError(
                f"{out_dir} holds a folder named {item.name} where this run writes a file: move or rename that "
                "folder, or choose another --out."
            )
    aside = Path(tempfile.mkdtemp(prefix=".replaced-", dir=staging))
    put_aside: list[str] = []
    placed: list[str] = []
    try:
        for item in items:
            target = out_dir / item.name
            if target.exists() or target.is_symlink():
                os.replace(target, aside / item.name)
                put_aside.append(item.name)
            os.replace(item, target)
            placed.append(item.name)
    except BaseException:
        restored = True
        for name in reversed(placed):
            (out_dir / name).unlink(missing_ok=True)
        for name in reversed(put_aside):
            try:
                os.replace(aside / name, out_dir / name)
            except OSError:
                restored = False
        if not restored:
            raise _NotRestored(f"the earlier outputs could not all be put back; they are kept in {aside}") from None
        raise
