"""The voxel grid between the engine and the scene: geometry, masks as labelmaps and back, and their digests.

Geometry is the one thing the scene writing must get right, so the rules are few and written once:

- The engine's volume is the input volume node's own voxel grid: its ``[k, j, i]`` array is
  ``slicer.util.arrayFromVolume`` of that node, and its LPS geometry is the node's IJK-to-RAS with the first two
  rows negated (``volume_geometry_lps``). A mask voxel ``(i, j, k)`` is therefore the node's voxel ``(i, j, k)``,
  whatever the node's orientation (oblique, flipped). RAS<->LPS happens here and nowhere else.
- Before writing anything, the engine's geometry is checked against the node (``check_same_grid``): a volume
  that was resampled, transformed or replaced since upload raises ``GridMismatch`` instead of writing masks in the
  wrong place.
- Masks go in as ``vtkOrientedImageData`` whose image-to-world matrix *is* the node's IJK-to-RAS and whose extent is
  the mask's box: no resampling, no rounding.

``mask_voxel_digest`` (``wire.masks``) is the SHA-256 the scene's edit detection compares (``scene.py``).

This module imports ``slicer`` and ``vtk`` only (when called): it runs inside Slicer and against the ``slicer-core``
wheel in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..wire.geometry import LPS_TO_RAS, Geometry
from ..wire.masks import CompactMask


class GridMismatch(ValueError):
    """The engine's volume geometry is not the input volume node's grid: writing masks would misplace them."""


# -- set-up ---------------------------------------------------------------------------------------------------------


def ensure_converter_rules() -> None:
    """Register the labelmap<->surface converter rules if nobody did.

    The Slicer application registers them at start-up; ``slicer-core`` does not, and without them
    ``AddEmptySegment`` cannot create a binary labelmap. Registering twice would duplicate the rules, hence the check.
    """
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()
    present = {rules[i].GetClassName() for i in range(len(rules))} if rules else set()
    for cls in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
    ):
        if cls.__name__ not in present:
            factory.RegisterConverterRule(cls())


# -- geometry: the one RAS<->LPS boundary ---------------------------------------------------------------------------


def ijk_to_ras(volume_node: Any) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix (voxel centres) as numpy."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_shape_kji(volume_node: Any) -> tuple[int, int, int]:
    """``(nk, nj, ni)`` of the node's image: the shape of its ``[k, j, i]`` array."""
    ni, nj, nk = volume_node.GetImageData().GetDimensions()
    return (int(nk), int(nj), int(ni))


def volume_geometry_lps(volume_node: Any) -> Geometry:
    """The engine's view of the node's grid: same voxels, LPS instead of RAS. Sent with the volume on upload."""
    a = ijk_to_ras(volume_node)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    direction_ras = a[:3, :3] / spacing[None, :]
    return Geometry.from_arrays(LPS_TO_RAS @ a[:3, 3], spacing, LPS_TO_RAS @ direction_ras)


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """LPS points (N x 3) to RAS; the same matrix maps back, as it is its own inverse."""
    return np.atleast_2d(np.asarray(points, dtype=float)) @ LPS_TO_RAS.T


def check_same_grid(volume_node: Any, geometry: Geometry, shape_kji: Sequence[int], tol_mm: float = 1e-3) -> None:
    """Refuse to write masks computed on a grid other than the node's (resampled, reoriented or replaced volume)."""
    node_shape = volume_shape_kji(volume_node)
    if tuple(int(s) for s in shape_kji) != node_shape:
        raise GridMismatch(
            f"the engine's volume has shape (k, j, i) {tuple(shape_kji)} but the volume node "
            f"'{volume_node.GetName()}' has {node_shape}: the session was made on another volume."
        )
    node_geometry = volume_geometry_lps(volume_node)
    if not node_geometry.is_close(geometry, tol_mm=tol_mm):
        raise GridMismatch(
            f"the volume node '{volume_node.GetName()}' no longer has the geometry the engine segmented "
            f"(origin/spacing/axes differ: node {node_geometry}, engine {geometry}). Was it transformed or resampled? "
            "Start a new session on the volume as it is now."
        )


# -- masks <-> vtkOrientedImageData -----------------------------------------------------------------------------------


def oriented_labelmap(volume_node: Any, mask: CompactMask) -> Any:
    """A binary labelmap on the node's grid covering the mask's box (empty extent for an empty mask)."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    image.SetImageToWorldMatrix(m)
    if mask.box is None:
        image.SetExtent(0, -1, 0, -1, 0, -1)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        return image
    k0, j0, i0, k1, j1, i1 = mask.box
    image.SetExtent(i0, i1, j0, j1, k0, k1)
    # vtkImageData stores x (i) fastest, then y (j), then z (k): exactly a C-order [k, j, i] ravel.
    voxels = np.ascontiguousarray(mask.crop().astype(np.uint8)).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(voxels, deep=1, array_type=vtk.VTK_UNSIGNED_CHAR))
    return image


def _reference_image(volume_node: Any) -> Any:
    """An empty oriented image with the node's grid, the target when a segment must be resampled onto it."""
    import slicer
    import vtk

    image = slicer.vtkOrientedImageData()
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    image.SetImageToWorldMatrix(m)
    image.SetExtent(volume_node.GetImageData().GetExtent())
    return image


def segment_mask(segmentation_node: Any, segment_id: str, volume_node: Any) -> CompactMask:
    """The segment's current voxels on the volume node's grid, as the engine's ``CompactMask``.

    Segments written here already lie on that grid; one whose labelmap geometry was changed in Slicer (e.g.
    Segment Editor's "Specify geometry") is resampled onto it with nearest neighbour.
    """
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    ok = slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, segment_id, image
    )
    if not ok:
        raise RuntimeError(f"segment {segment_id!r} has no binary labelmap representation.")
    shape = volume_shape_kji(volume_node)
    image_to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_world)
    same_grid = np.allclose(
        [[image_to_world.GetElement(r, c) for c in range(4)] for r in range(4)], ijk_to_ras(volume_node), atol=1e-6
    )
    if not same_grid:
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, _reference_image(volume_node), resampled, False
        )
        image = resampled
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    if x1 < x0 or y1 < y0 or z1 < z0 or image.GetPointData().GetScalars() is None:
        return CompactMask.empty()
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(
        z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1
    )
    dense = np.zeros(shape, dtype=bool)
    # Clip to the volume: a segment painted beyond the volume's edge has no engine voxels there.
    src = (slice(max(0, -z0), None), slice(max(0, -y0), None), slice(max(0, -x0), None))
    kk0, jj0, ii0 = max(z0, 0), max(y0, 0), max(x0, 0)
    kk1, jj1, ii1 = min(z1, shape[0] - 1), min(y1, shape[1] - 1), min(x1, shape[2] - 1)
    if kk1 < kk0 or jj1 < jj0 or ii1 < ii0:
        return CompactMask.empty()
    part = voxels[src][: kk1 - kk0 + 1, : jj1 - jj0 + 1, : ii1 - ii0 + 1]
    # Segments share labelmap layers (one label value each), so keep this segment's value only, never "non-zero".
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    dense[kk0 : kk1 + 1, jj0 : jj1 + 1, ii0 : ii1 + 1] = part == label
    return CompactMask.from_dense(dense)


def key_slice_centroid_ijk(mask: CompactMask, key_slice: int, shape_kji: Sequence[int]) -> np.ndarray | None:
    """Continuous ``(i, j, k)`` of the mask's centroid on its key slice (3D centroid if that slice is empty)."""
    if mask.is_empty:
        return None
    plane = mask.slice_mask(key_slice, shape_kji)
    if plane.any():
        js, is_ = np.nonzero(plane)
        return np.array([is_.mean(), js.mean(), float(key_slice)])
    ks, js, is_ = np.nonzero(mask.to_dense(shape_kji))
    return np.array([is_.mean(), js.mean(), ks.mean()])


def ijk_points_to_ras(volume_node: Any, ijk: np.ndarray) -> np.ndarray:
    """Continuous voxel indices of the node (N x 3, ``(i, j, k)``) to RAS millimetres."""
    a = ijk_to_ras(volume_node)
    ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
    return ijk @ a[:3, :3].T + a[:3, 3]


def segment_tag(segment: Any, name: str) -> str:
    """A segment's tag value, "" when absent (the C++ getter fills an output argument, hence the reference)."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""
