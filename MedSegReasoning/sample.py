"""The README's demo input: a real brain MR (the MNI152 2009a T1 template nilearn ships) as a DICOM series.

Built locally instead of downloaded, so the first command works offline and nothing with patient data is
redistributed. ``sample.json`` beside the series records a box around the left caudate nucleus, measured from
the template's own grey/white-matter maps rather than typed in, so the demo prompt stays right if the
template or the orientation code changes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .wire.errors import InputError

TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
SAMPLE_FORMAT = 1
SERIES_DESCRIPTION = "MNI152 2009a T1 template (sample)"
INTENSITY_SCALE = 16  # template 0-255 -> 0-4080, the range of a 12-bit MR scanner
_SEED = 152  # fixed UIDs: rebuilding gives the same series
_TISSUE_THRESHOLD = 128  # gm + wm probability (0-510) above which a voxel is brain tissue
_GREY_THRESHOLD = 128  # grey-matter probability (0-255) above which a deep voxel is grey matter
_DEEP_MM = 20  # cortical grey matter lies within this distance of the brain surface; the basal ganglia deeper
_BOX_MARGIN = 2  # voxels around the measured structure, as a user would draw it


@dataclass(frozen=True)
class SampleBox:
    """A 2D box on axial slice ``k``: columns ``i0..i1`` and rows ``j0..j1``, inclusive voxel indices."""

    i0: int
    j0: int
    i1: int
    j1: int
    k: int


def build_sample(out_dir: str | Path) -> Path:
    """Build (or reuse) ``out_dir/dicom`` and ``out_dir/sample.json``; returns the DICOM folder."""
    out_dir = Path(out_dir)
    dicom_dir = out_dir / "dicom"
    if _is_complete(out_dir):
        return dicom_dir
    if dicom_dir.exists():
        raise InputError(
            f"{dicom_dir} exists but is not a complete sample: remove it, or give another folder for the sample."
        )
    t1, gm, wm = _load_template()
    caudate, brain = _measure(gm, wm)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _write_series_atomically(t1, dicom_dir)
    _write_json(out_dir / "sample.json", _description(t1, caudate, brain, len(files)))
    return dicom_dir


def read_sample_description(out_dir: str | Path) -> dict:
    """What ``build_sample`` recorded: the structure, the suggested box and the question for the demo."""
    return json.loads((Path(out_dir) / "sample.json").read_text(encoding="utf-8"))


def template_path(kind: str = "t1") -> Path:
    """The template file inside the installed nilearn, found without importing nilearn (slow, pulls pandas)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the sample needs nilearn's MNI152 template: pip install 'medseg-reasoning[sample]'.")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / TEMPLATE.format(kind)
    if not path.is_file():
        raise InputError(
            f"nilearn is installed but lacks {path.name}: reinstall it with pip install 'medseg-reasoning[sample]'."
        )
    return path


def _is_complete(out_dir: Path) -> bool:
    try:
        description = read_sample_description(out_dir)
    except (OSError, ValueError):
        return False
    if description.get("format") != SAMPLE_FORMAT:
        return False
    files = list((out_dir / "dicom").glob("*.dcm"))
    return len(files) == description.get("files")


def _load_template():
    """T1 and the grey- and white-matter probability maps (0-255) on one grid, axes turned to L, P, S."""
    from .volume.itk_io import read_itk_image, reorient_to_lps

    t1 = reorient_to_lps(read_itk_image(template_path("t1")))
    gm = reorient_to_lps(read_itk_image(template_path("gm")))
    wm = reorient_to_lps(read_itk_image(template_path("wm")))
    if not (gm.geometry.is_close(t1.geometry) and wm.geometry.is_close(t1.geometry)):
        raise InputError("nilearn's MNI152 tissue maps do not share the T1 grid: reinstall nilearn.")
    return t1, gm.array.astype(np.int16), wm.array.astype(np.int16)


def _measure(gm: np.ndarray, wm: np.ndarray) -> tuple[SampleBox, SampleBox]:
    """The left caudate nucleus's box on its largest axial slice, and the brain's box on that slice.

    Deep grey matter (grey-matter probability above white-matter's, far from the cortex) falls into a few
    components; the two largest are the heads of the caudate nuclei beside the frontal horns, and the one with
    the larger mean i lies on the patient's left (the template is stored LPS, i towards the left). Why this
    structure: LiteMedSAM segments it well from a box (measured on this template: key-slice Dice 0.87 against
    the grey-matter component, model score 0.88), whereas a box on a thin lateral ventricle made it segment
    the caudate beside it (Dice 0.0) and a whole-brain box gave Dice 0.5.
    """
    brain, left = _brain_and_left_caudate(gm, wm)
    k = int(np.argmax(left.sum(axis=(1, 2))))
    return _box(left[k], k, _BOX_MARGIN), _box(brain[k], k, 0)


def left_caudate(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """The left caudate nucleus as a bool ``[k, j, i]`` mask on the template grid (the evaluation's real case)."""
    return _brain_and_left_caudate(gm, wm)[1]


def _brain_and_left_caudate(gm: np.ndarray, wm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The brain and the left caudate nucleus as bool masks (how: see ``_measure``)."""
    from scipy import ndimage as ndi

    brain = ndi.binary_fill_holes((gm + wm) > _TISSUE_THRESHOLD)
    deep = ndi.binary_erosion(brain, iterations=_DEEP_MM)  # 1 mm voxels: iterations are millimetres
    labels, n = ndi.label(deep & (gm > wm) & (gm > _GREY_THRESHOLD))
    if n < 2:
        raise InputError("no deep grey matter found in the MNI152 template: reinstall nilearn.")
    sizes = ndi.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    two_largest = np.argsort(sizes)[::-1][:2] + 1
    mean_i = [np.nonzero(labels == lab)[2].mean() for lab in two_largest]
    return brain, labels == two_largest[int(np.argmax(mean_i))]


def _box(mask2d: np.ndarray, k: int, margin: int) -> SampleBox:
    jj, ii = np.nonzero(mask2d)
    nj, ni = mask2d.shape
    return SampleBox(
        i0=max(0, int(ii.min()) - margin),
        j0=max(0, int(jj.min()) - margin),
        i1=min(ni - 1, int(ii.max()) + margin),
        j1=min(nj - 1, int(jj.max()) + margin),
        k=k,
    )


def _write_series_atomically(t1, dicom_dir: Path) -> list[Path]:
    """Write into a hidden sibling, then rename: an interrupted build never leaves a half series behind."""
    from .volume.dicom_writer import SeriesDescriptors, write_dicom_series

    array = (t1.array.astype(np.int16) * INTENSITY_SCALE).astype(np.int16)
    descriptors = SeriesDescriptors(
        patient_name="MNI152^Template",
        patient_id="MNI152-2009A",
        study_description="MedSegReasoning sample",
        series_description=SERIES_DESCRIPTION,
    )
    tmp = Path(tempfile.mkdtemp(prefix=".dicom-partial-", dir=dicom_dir.parent))
    try:
        files = write_dicom_series(
            array, t1.geometry, tmp, modality="MR", descriptors=descriptors, rng=np.random.default_rng(_SEED)
        )
        os.replace(tmp, dicom_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [dicom_dir / f.name for f in files]


def _description(t1, caudate: SampleBox, brain: SampleBox, n_files: int) -> dict:
    nk, nj, ni = t1.array.shape
    return {
        "format": SAMPLE_FORMAT,
        "source": "MNI152 ICBM 2009a symmetric T1 template, shipped by nilearn",
        "dicom": "dicom",
        "files": n_files,
        "shape_kji": [nk, nj, ni],
        "structure": "left caudate nucleus",
        "question": "Segment the head of the left caudate nucleus.",
        "box": asdict(caudate),
        "brain_box": asdict(brain),
    }


def _write_json(path: Path, data: dict) -> None:
    from .atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
