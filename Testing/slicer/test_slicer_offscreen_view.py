"""The scene the module writes, rendered by Slicer's own slice logic and displayable managers (slicer-core, VTK
offscreen): the drawn segment covers exactly the pixels whose centres fall in the mask's voxels, and the entity's
markup is drawn where its control point projects (#16). The checks (``support/offscreen.py``) run in a child
process: see why there.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

from support import offscreen
from support.slicer import require_slicer_core


def _in_child(check: Callable[[Path], None], folder: Path) -> None:
    """``check(folder)`` in a fresh interpreter; its AssertionError (or any error) is raised here."""
    require_slicer_core()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(check, (folder,))


def test_the_rendered_segment_sits_on_the_masks_voxels(tmp_path):
    _in_child(offscreen.check_segment_on_voxels, tmp_path)


def test_the_rendered_markup_sits_on_its_control_point(tmp_path):
    _in_child(offscreen.check_markup_on_control_point, tmp_path)


def test_unknown_orientation_is_refused(tmp_path):
    _in_child(offscreen.check_unknown_orientation, tmp_path)
