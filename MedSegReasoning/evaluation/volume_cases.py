"""The real 3D cases the interactive benchmark measures, written as ``folder`` datasets that ``eval`` reads.

Why these: the 3D mask must hold on CT and MR, organs, vessels and brain, at full and at low resolution, and on
series that are oblique and flipped, and be tuned on all of them together, never on one.

- ``ct``: the real abdominal CT beside the project (20 slices, 0.98 x 0.98 x 2 mm) with its TotalSegmentator labels
  brought onto the CT grid through physical space: organs and vessels (the goals), and bones, muscles and ribs of
  at least 1,000 voxels (tracked apart: thin curved structures are a different problem).
- ``ct-3mm``: the same CT resampled to 3 mm pixels (171 x 171): small, low-resolution targets.
- ``mni-2mm-oblique``: the MNI152 2009a T1 template that nilearn ships, resampled onto 1 x 1 x 2 mm voxels whose
  axes are turned 12 degrees about left-right and 8 about anterior-posterior, with the column axis pointing to the
  patient's right (flipped); whole brain, white matter, grey matter and the left caudate nucleus from the
  template's own tissue maps (``sample``).
- ``mni-4mm``: every 4th axial slice of the template (1 x 1 x 4 mm).
- ``mni-3mm``: the template at 3 mm isotropic (66 x 78 pixels a slice): low resolution.

Two small crops of the same data check that everything runs in seconds rather than minutes (the tests and the
benchmark's ``--quick``), one structure each, never for figures to quote:

- ``ct-spleen-crop``: 6 slices of the real CT through the spleen's middle, cut in-plane to the spleen plus 24 pixels;
- ``mni-caudate-crop``: the MNI152 template at 1 x 1 x 4 mm around the left caudate nucleus (one slice above and
  below it, 20 mm in-plane margin).

and ``ct-spleen-slab``, 8 whole 512 x 512 slices of the real CT through the spleen, for the speed check of
skip-and-interpolate: in-plane it is what a user's series looks like. On the tight crop LiteMedSAM's propagated
spleen masks come out about 45 % larger than the key slice's (about 10,400 pixels against 7,057; the truth has about
7,000), so no far slice agrees with the key slice and skip-and-interpolate encodes every slice there; on the whole
slices they agree.

Each case is ``<name>/volume/`` (a DICOM series, written with ``dicom_writer``), one NRRD label map per
structure on exactly the series' grid, and ``questions.jsonl``; ``build_cases`` writes them all into one folder
with a top-level ``questions.jsonl`` that names them, so ``eval DIR --mode interactive`` runs every case.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..volume.core import Geometry, Volume
from ..wire.errors import InputError

CT_GOAL_STRUCTURES = (
    "liver",
    "spleen",
    "stomach",
    "pancreas",
    "adrenal_gland_right",
    "aorta",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
)
"""The CT organs and vessels the goals are measured on."""
CT_TRACKED_MIN_VOXELS = 1000
BRAIN_STRUCTURES = ("whole brain", "white matter", "grey matter", "left caudate nucleus")
CASE_NAMES = ("ct", "ct-3mm", "mni-2mm-oblique", "mni-4mm", "mni-3mm")
SMALL_CASE_NAMES = ("ct-spleen-crop", "mni-caudate-crop")
"""Small crops for checking that the protocol runs (tests, ``benchmarks/volumes.py --quick``), not for figures."""
SLAB_CASE_NAME = "ct-spleen-slab"
CROP_SLICES = 6
CROP_MARGIN_PX = 24
SLAB_SLICES = 8
LOW_RESOLUTION_PAIRS = {"ct-3mm": "ct", "mni-3mm": "mni-4mm"}
"""Low-resolution case -> the same structures at full in-plane resolution (the small-target goal compares them)."""


@dataclass(frozen=True)
class CaseStructure:
    """One structure of a case: its name, its group (``goal`` or ``tracked``) and its label-map file."""

    name: str
    group: str
    labels: str


def build_cases(out_dir: str | Path, shared_ct: str | Path | None, names: tuple[str, ...] = CASE_NAMES) -> Path:
    """Write the named cases into ``out_dir`` (reused where complete) and a ``questions.jsonl`` over all of them.

    ``shared_ct`` is the folder of the real CT (``dicom/``, ``reference-labels.nii.gz``, ``labels.json``); without
    it the CT cases are left out.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[dict] = []
    for name in names:
        if name.startswith("ct") and (shared_ct is None or not (Path(shared_ct) / "dicom").is_dir()):
            continue
        case_dir = out / name
        marker = case_dir / "case.json"
        if not marker.is_file():
            structures = _BUILDERS[name](case_dir, shared_ct)
            marker.write_text(json.dumps([s.__dict__ for s in structures], indent=1) + "\n")
        for item in json.loads(marker.read_text()):
            structure = CaseStructure(**item)
            lines.append(
                {
                    "id": f"{name}/{structure.name}",
                    "volume": f"{name}/volume",
                    "labels": f"{name}/{structure.labels}",
                    "label": 1,
                    "name": structure.name,
                    "category": structure.group,
                    "question": f"Segment the {structure.name.replace('_', ' ')}.",
                }
            )
    if not lines:
        raise InputError(f"no case could be built into {out}: the CT cases need the shared CT folder.")
    (out / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return out


# -- CT -----------------------------------------------------------------------------------------------------------


def _ct_full(case_dir: Path, shared_ct: str | Path | None) -> list[CaseStructure]:
    volume, labels, names = _read_ct(shared_ct)
    return _write_ct_case(case_dir, volume, labels, names)


def _ct_3mm(case_dir: Path, shared_ct: str | Path | None) -> list[CaseStructure]:
    volume, labels, names = _read_ct(shared_ct)
    si, sj, sk = volume.geometry.spacing
    target = Geometry.from_arrays(volume.geometry.origin, (3.0, 3.0, sk), volume.geometry.direction_matrix)
    ni, nj = (int(math.floor(n * s / 3.0)) for n, s in ((volume.shape[2], si), (volume.shape[1], sj)))
    size = (ni, nj, volume.shape[0])
    image = _resample(volume.array.astype(np.float32), volume.geometry, target, size, linear=True, fill=-1024.0)
    low = Volume(np.rint(image).astype(np.int16), target, modality="CT")
    return _write_ct_case(case_dir, low, _resample(labels, volume.geometry, target, size, linear=False), names)


def _ct_spleen_crop(case_dir: Path, shared_ct: str | Path | None) -> list[CaseStructure]:
    """``CROP_SLICES`` slices through the middle of the spleen, cut in-plane to it plus ``CROP_MARGIN_PX``."""
    volume, labels, names = _read_ct(shared_ct)
    value = next(v for v, name in names.items() if name == "spleen")
    crop = _crop_around(labels == value, CROP_SLICES, CROP_MARGIN_PX)
    small = _cropped_volume(volume, crop)
    return _write_ct_case(case_dir, small, np.where(labels[crop] == value, value, 0), {value: "spleen"})


def _ct_spleen_slab(case_dir: Path, shared_ct: str | Path | None) -> list[CaseStructure]:
    """``SLAB_SLICES`` whole slices through the middle of the spleen."""
    volume, labels, names = _read_ct(shared_ct)
    value = next(v for v, name in names.items() if name == "spleen")
    crop = _crop_around(labels == value, SLAB_SLICES, None)
    small = _cropped_volume(volume, crop)
    return _write_ct_case(case_dir, small, np.where(labels[crop] == value, value, 0), {value: "spleen"})


def _crop_around(mask: np.ndarray, slices: int, margin_px: int | None) -> tuple[slice, slice, slice]:
    """``[k, j, i]`` slices: ``slices`` axial slices centred on the mask's largest one (inside the volume), and its
    in-plane bounding box on them grown by ``margin_px`` (``None``: the whole slices)."""
    areas = mask.sum(axis=(1, 2))
    k0 = min(max(int(np.argmax(areas)) - slices // 2, 0), max(mask.shape[0] - slices, 0))
    ks = slice(k0, min(k0 + slices, mask.shape[0]))
    nj, ni = mask.shape[1:]
    if margin_px is None:
        return ks, slice(0, nj), slice(0, ni)
    jj, ii = np.nonzero(mask[ks].any(axis=0))
    js = slice(max(int(jj.min()) - margin_px, 0), min(int(jj.max()) + margin_px + 1, nj))
    is_ = slice(max(int(ii.min()) - margin_px, 0), min(int(ii.max()) + margin_px + 1, ni))
    return ks, js, is_


def _cropped_volume(volume: Volume, crop: tuple[slice, slice, slice]) -> Volume:
    """The voxels in ``crop`` with the geometry that keeps each voxel where it was in the patient."""
    ks, js, is_ = crop
    corner = np.array([[float(is_.start), float(js.start), float(ks.start)]])
    origin = volume.geometry.index_to_physical(corner)[0]
    geometry = Geometry.from_arrays(origin, volume.geometry.spacing, volume.geometry.direction_matrix)
    return Volume(np.ascontiguousarray(volume.array[crop]), geometry, modality=volume.modality)


def _read_ct(shared_folder: str | Path | None) -> tuple[Volume, np.ndarray, dict[int, str]]:
    import SimpleITK as sitk

    from ..volume.loader import load_volume

    assert shared_folder is not None  # build_cases leaves the CT cases out without the shared CT folder
    shared_ct = Path(shared_folder)
    volume = load_volume(shared_ct / "dicom")
    reference = sitk.ReadImage(str(shared_ct / "reference-labels.nii.gz"))
    g = volume.geometry
    grid = sitk.Image(*volume.size_ijk, sitk.sitkUInt8)
    grid.SetOrigin(g.origin)
    grid.SetSpacing(g.spacing)
    grid.SetDirection(tuple(g.direction_matrix.ravel()))
    on_grid = sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, reference.GetPixelID())
    names = {int(k): v for k, v in json.loads((shared_ct / "labels.json").read_text()).items()}
    return volume, sitk.GetArrayFromImage(on_grid), names


def _write_ct_case(case_dir: Path, volume: Volume, labels: np.ndarray, names: dict[int, str]) -> list[CaseStructure]:
    from ..volume.dicom_writer import SeriesDescriptors, write_dicom_series

    write_dicom_series(
        volume.array.astype(np.float32),
        volume.geometry,
        case_dir / "volume",
        modality="CT",
        descriptors=SeriesDescriptors(series_description=f"abdominal CT {case_dir.name}"),
        rng=np.random.default_rng(len(case_dir.name)),
    )
    structures = []
    for value, name in sorted(names.items()):
        mask = labels == value
        group = "goal" if name in CT_GOAL_STRUCTURES else "tracked"
        if group == "tracked" and mask.sum() < CT_TRACKED_MIN_VOXELS or not mask.any():
            continue
        structures.append(_write_label(case_dir, name, group, mask, volume.geometry))
    return structures


def _as_read_back(case_dir: Path) -> Volume:
    """The series as a reader sees it: a reader sorts slices along the normal of the rows and columns, so a series
    written with a left-handed grid comes back with its slice order (and k axis) reversed; labels go onto that."""
    from ..volume.loader import load_volume

    return load_volume(case_dir / "volume")


# -- MNI152 -------------------------------------------------------------------------------------------------------


def _mni_2mm_oblique(case_dir: Path, _shared: object) -> list[CaseStructure]:
    rotation = _rotation_x(math.radians(12.0)) @ _rotation_y(math.radians(8.0))
    direction = rotation @ np.diag([-1.0, 1.0, 1.0])  # columns: i (to the patient's right: flipped), j, k
    return _write_mni_case(case_dir, (1.0, 1.0, 2.0), direction)


def _mni_4mm(case_dir: Path, _shared: object) -> list[CaseStructure]:
    return _write_mni_case(case_dir, (1.0, 1.0, 4.0), np.eye(3))


def _mni_3mm(case_dir: Path, _shared: object) -> list[CaseStructure]:
    return _write_mni_case(case_dir, (3.0, 3.0, 3.0), np.eye(3))


def _mni_caudate_crop(case_dir: Path, _shared: object) -> list[CaseStructure]:
    """The left caudate nucleus at 1 x 1 x 4 mm: one 4 mm slice beyond each end, 20 mm in-plane margin."""
    from ..sample import INTENSITY_SCALE
    from ..volume.dicom_writer import SeriesDescriptors, write_dicom_series

    t1, structures = mni_structures()
    caudate = structures["left caudate nucleus"]
    target, size = _grid_around(caudate, t1.geometry, (1.0, 1.0, 4.0), np.eye(3), margin_mm=(20.0, 20.0, 4.0))
    image = _resample(t1.array.astype(np.float32), t1.geometry, target, size, linear=True, fill=0.0)
    write_dicom_series(
        (np.rint(image) * INTENSITY_SCALE).astype(np.int16),
        target,
        case_dir / "volume",
        modality="MR",
        descriptors=SeriesDescriptors(
            patient_name="MNI152^Template",
            patient_id="MNI152-2009A",
            study_description="MedSegReasoning interactive benchmark",
            series_description=f"MNI152 2009a T1 {case_dir.name}",
        ),
        rng=np.random.default_rng(152 + len(case_dir.name)),
    )
    return [_write_label(case_dir, "left caudate nucleus", "goal", caudate, t1.geometry)]


def mni_structures() -> tuple[Volume, dict[str, np.ndarray]]:
    """The template T1 (LPS, 1 mm) and its four structures as bool masks on the template grid."""
    from ..sample import _TISSUE_THRESHOLD, _brain_and_left_caudate, _load_template

    t1, gm, wm = _load_template()
    brain, caudate = _brain_and_left_caudate(gm, wm)
    half = _TISSUE_THRESHOLD
    return t1, {
        "whole brain": brain,
        "white matter": brain & (wm > half) & (wm >= gm),
        "grey matter": brain & (gm > half) & (gm > wm),
        "left caudate nucleus": caudate,
    }


def _write_mni_case(case_dir: Path, spacing: tuple[float, float, float], direction: np.ndarray) -> list[CaseStructure]:
    from ..sample import INTENSITY_SCALE
    from ..volume.dicom_writer import SeriesDescriptors, write_dicom_series

    t1, structures = mni_structures()
    target, size = _grid_around(structures["whole brain"], t1.geometry, spacing, direction, margin_mm=6.0)
    image = _resample(t1.array.astype(np.float32), t1.geometry, target, size, linear=True, fill=0.0)
    write_dicom_series(
        (np.rint(image) * INTENSITY_SCALE).astype(np.int16),
        target,
        case_dir / "volume",
        modality="MR",
        descriptors=SeriesDescriptors(
            patient_name="MNI152^Template",
            patient_id="MNI152-2009A",
            study_description="MedSegReasoning interactive benchmark",
            series_description=f"MNI152 2009a T1 {case_dir.name}",
        ),
        rng=np.random.default_rng(152 + len(case_dir.name)),
    )
    return [_write_label(case_dir, name, "goal", mask, t1.geometry) for name, mask in structures.items()]


def _grid_around(
    mask: np.ndarray,
    geometry: Geometry,
    spacing: tuple[float, float, float],
    direction: np.ndarray,
    margin_mm: float | tuple[float, float, float],
) -> tuple[Geometry, tuple[int, int, int]]:
    """A grid with ``spacing`` and ``direction`` (columns i, j, k) covering ``mask`` plus ``margin_mm`` all round
    (one value, or one per new axis i, j, k)."""
    kk, jj, ii = np.nonzero(mask)
    corners = np.array(
        [[i, j, k] for i in (ii.min(), ii.max()) for j in (jj.min(), jj.max()) for k in (kk.min(), kk.max())], float
    )
    points = geometry.index_to_physical(corners)
    local = points @ direction  # coordinates along the new axes (direction is orthonormal)
    margin = np.broadcast_to(np.asarray(margin_mm, dtype=float), (3,))
    low, high = local.min(axis=0) - margin, local.max(axis=0) + margin
    ni, nj, nk = (int(math.ceil((h - lo) / s)) + 1 for lo, h, s in zip(low, high, spacing, strict=True))
    origin = direction @ low
    return Geometry.from_arrays(origin, spacing, direction), (ni, nj, nk)


# -- shared -------------------------------------------------------------------------------------------------------


def _resample(
    array: np.ndarray,
    source: Geometry,
    target: Geometry,
    size_ijk: tuple[int, int, int],
    *,
    linear: bool,
    fill: float = 0.0,
) -> np.ndarray:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetOrigin(source.origin)
    image.SetSpacing(source.spacing)
    image.SetDirection(tuple(source.direction_matrix.ravel()))
    grid = sitk.Image(*(int(n) for n in size_ijk), image.GetPixelID())
    grid.SetOrigin(target.origin)
    grid.SetSpacing(target.spacing)
    grid.SetDirection(tuple(target.direction_matrix.ravel()))
    method = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), method, fill, image.GetPixelID()))


def _write_label(case_dir: Path, name: str, group: str, mask: np.ndarray, geometry: Geometry) -> CaseStructure:
    """``mask`` (on ``geometry``) as a label map on the grid the case's series is read back on."""
    from ..volume.itk_io import write_label_image

    grid = _as_read_back(case_dir)
    on_grid = _resample(mask.astype(np.uint8), geometry, grid.geometry, grid.size_ijk, linear=False) > 0
    file = f"labels-{name.replace(' ', '_')}.nrrd"
    write_label_image(case_dir / file, on_grid.astype(np.uint8), grid.geometry)
    return CaseStructure(name, group, file)


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


_BUILDERS = {
    "ct": _ct_full,
    "ct-3mm": _ct_3mm,
    "mni-2mm-oblique": _mni_2mm_oblique,
    "mni-4mm": _mni_4mm,
    "mni-3mm": _mni_3mm,
    "ct-spleen-crop": _ct_spleen_crop,
    "mni-caudate-crop": _mni_caudate_crop,
    "ct-spleen-slab": _ct_spleen_slab,
}
