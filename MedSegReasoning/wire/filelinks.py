"""Many files in one folder of their own, without copying where the file system allows.

Why: a DICOM series is often a few hundred files among others (Slicer's database folder, a PACS download). A
folder holding exactly them gives a folder reader (series split, sorting, consistency checks) or a child command
one short path instead of hundreds. Standard library only: the Slicer side uses it too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path


def link_files(files: Iterable[str | Path], folder: Path) -> Path:
    """``files`` in the new ``folder`` as hard links (copies where linking fails: another disk, Windows shares),
    named ``<index>-<name>`` so files of the same name from different folders do not collide."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    for index, path in enumerate(Path(f) for f in files):
        target = folder / f"{index:06d}-{path.name}"
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    return folder
