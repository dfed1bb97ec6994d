"""Choosing what to show: the montage for the key slice, the key slice alone to refine on, or the user's current view
when the question is about "this slice".
"""

from __future__ import annotations

import re

from ...volume.core import Orientation, Volume
from ...volume.windowing import Window
from .model import CurrentView, ReasoningStrategy, ViewSet
from .render import candidate_slices, montage_view, safe_modality, slice_view

# ---------------------------------------------------------------------------------------------------------------
# Choosing what to show

_THIS_VIEW = re.compile(
    r"\b(this|current|displayed|shown|visible|present)\s+(slice|image|view|section|plane|frame|cut)\b"
    r"|\b(on|in)\s+(the\s+)?screen\b|\bhere\b",
    re.IGNORECASE,
)


def refers_to_current_view(question: str) -> bool:
    """True for questions about what the user is looking at ("what is this mass on the current slice?")."""
    return bool(_THIS_VIEW.search(question))


def wants_current_view(strategy: ReasoningStrategy, question: str, current: CurrentView | None) -> bool:
    if current is None or strategy.use_current_view == "never":
        return False
    return strategy.use_current_view == "always" or refers_to_current_view(question)


def key_slice_views(
    volume: Volume, window: Window, strategy: ReasoningStrategy, current: CurrentView | None = None
) -> ViewSet:
    """Step 1: the montage. An axial current view's slice is always one of the candidates."""
    include = current.slice if current is not None and current.orientation == "axial" else None
    slices = candidate_slices(volume.shape[0], strategy.montage_slices, include)
    view = montage_view(volume, slices, window, strategy.tile_size, strategy.pad_to_multiple)
    return ViewSet("pick_slice", (view,), volume.shape, safe_modality(volume), refine_next=strategy.refine)


def refine_views(
    volume: Volume,
    window: Window,
    strategy: ReasoningStrategy,
    orientation: Orientation,
    index: int,
    expected: tuple[str, ...] = (),
) -> ViewSet:
    """Step 2: one slice at full resolution."""
    view = slice_view(volume, orientation, index, window, strategy.stretch_reformats, strategy.pad_to_multiple)
    return ViewSet("locate", (view,), volume.shape, safe_modality(volume), expected)
