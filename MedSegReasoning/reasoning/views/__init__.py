"""What the reasoner sees: rendered views of the volume, each with an exact pixel -> voxel mapping.

A vision-language model cannot read a whole volume: it sees a few 2D images. So a question is answered in (at
most) two looks, configured by ``ReasoningStrategy``:

1. **Pick the key slice**: a montage of ``montage_slices`` axial slices, evenly spaced through the volume, each
   tile labelled with its slice number. The model names the slice (or slices) where the structure is best seen;
   a model that answers with a box instead (MedReasoner/Seg-Zero style) picks the slice through the tile its box
   lies on.
2. **Refine**: the chosen slice alone at full resolution, on which the model places the box and points.

When the caller says what the user is looking at (``CurrentView``: orientation and slice index, as Slicer
knows it), questions about "this slice" skip the montage and go straight to step 2 on that view, in any of the
three orientations; a target placed on a coronal or sagittal view is segmented and propagated in that orientation
(``pipeline.segment_prompt``, docs/reasoning.md "Coronal and sagittal key slices").

Views are never resampled through the volume: coronal and sagittal views are the array transposed, so each
pixel is one voxel (rows may be repeated a whole number of times to undo thick slices, and rows are flipped so
that superior is up when the k axis points superior). Montage tiles are scaled as images. Every view keeps
the mapping back to voxel indices in its ``Tile``s, and nothing else about the volume: no DICOM header text
ever reaches a prompt.

Modules: ``model`` (strategy, current view, ``Tile``/``View``/``ViewSet``), ``render`` (planes and montages),
``overlay`` (known entities drawn on the views), ``choice`` (which views a question gets).
"""

from .choice import key_slice_views, refers_to_current_view, refine_views, wants_current_view
from .model import DEFAULT_STRATEGY, CurrentView, ReasoningStrategy, Task, Tile, View, ViewSet
from .overlay import DEFAULT_ENTITY_COLOR, DrawableEntity, draw_entities
from .render import candidate_slices, montage_view, pad_image, render_plane, safe_modality, slice_view

__all__ = [
    "DEFAULT_ENTITY_COLOR",
    "DEFAULT_STRATEGY",
    "CurrentView",
    "DrawableEntity",
    "ReasoningStrategy",
    "Task",
    "Tile",
    "View",
    "ViewSet",
    "candidate_slices",
    "draw_entities",
    "key_slice_views",
    "montage_view",
    "pad_image",
    "refers_to_current_view",
    "refine_views",
    "render_plane",
    "safe_modality",
    "slice_view",
    "wants_current_view",
]
