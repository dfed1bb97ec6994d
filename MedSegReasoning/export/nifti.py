"""NIfTI label maps with a JSON sidecar: what research pipelines (nnU-Net, MONAI, FSL) read.

``labels.nii.gz`` holds segment n as value n on exactly the source grid (SimpleITK converts our LPS geometry to
NIfTI's RAS header). A NIfTI label map cannot hold two labels in one voxel, so where segments overlap the later
ones go to further files ``labels-layer2.nii.gz``, ... (the same first-fit layers as the ``.seg.nrrd``); nothing
is painted over. ``labels.json`` says which value in which file is which structure: entity id, name, colour,
codes (and Slicer's terminology string), review status, how it was made, and its measurements.

Sidecar format ``medseg-reasoning/labels`` version 1 (documented in docs/export.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_output, write_text_atomic
from .model import ExportSet, layers

SIDECAR_FORMAT = "medseg-reasoning/labels"
SIDECAR_VERSION = 1


def write_nifti_labels(
    export_set: ExportSet, folder: Path, stem: str = "labels", deidentified: bool = False
) -> list[Path]:
    """Write ``{stem}.nii.gz`` (+ ``{stem}-layer{n}.nii.gz`` for overlaps) and ``{stem}.json`` into ``folder``.

    ``deidentified`` leaves the source's path out of the sidecar (folder names often carry a patient's name)."""
    folder = Path(folder)
    layer_of = layers([s.mask for s in export_set.segments])
    names = [f"{stem}.nii.gz" if n == 0 else f"{stem}-layer{n + 1}.nii.gz" for n in range(max(layer_of) + 1)]
    dtype = np.uint8 if len(export_set.segments) < 256 else np.uint16
    written = []
    for n, name in enumerate(names):
        data = np.zeros(export_set.shape, dtype=dtype)
        for segment, layer in zip(export_set.segments, layer_of, strict=True):
            if layer == n:
                data[segment.mask] = segment.number
        written.append(_write_image(folder / name, data, export_set))
    sidecar = folder / f"{stem}.json"
    doc = _sidecar(export_set, names, layer_of)
    if deidentified:
        doc["source"] = None
    write_text_atomic(sidecar, json.dumps(doc, indent=1) + "\n")
    return [*written, sidecar]


def _write_image(path: Path, data: np.ndarray, export_set: ExportSet) -> Path:
    import SimpleITK as sitk

    from ..volume.itk_io import library_path

    g = export_set.geometry
    image = sitk.GetImageFromArray(np.ascontiguousarray(data))
    image.SetOrigin(g.origin)
    image.SetSpacing(g.spacing)
    image.SetDirection(tuple(g.direction_matrix.ravel()))
    with atomic_output(path) as tmp, library_path(tmp) as name:  # a non-UTF-8 folder name would abort ITK
        sitk.WriteImage(image, name, useCompression=True)
    return path


def _sidecar(export_set: ExportSet, names: list[str], layer_of: list[int]) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "software": f"medseg-reasoning {__version__}",
        "source": {"path": export_set.source_path, "exported_from": export_set.origin},
        "models": {"reasoner": export_set.models.reasoner, "segmenter": export_set.models.segmenter},
        "files": names,
        "labels": [
            {
                "value": s.number,
                "file": names[layer],
                "id": s.entity_id,
                "name": s.name,
                "color": list(s.color),
                "terminology": s.terminology.to_dict(),
                "slicer_terminology": s.terminology.to_slicer_string(),
                "review": s.review,
                "algorithm_type": "AUTOMATIC" if s.automatic else "SEMIAUTOMATIC",
                "edited": s.edited,
                "round": s.round,
                "voxels": int(np.count_nonzero(s.mask)),
                "volume_ml": round(s.volume_ml, 4),
                "key_slice": s.key_slice,
                "max_diameter_mm": None if s.max_diameter_mm is None else round(s.max_diameter_mm, 3),
                "findings": s.findings,
            }
            for s, layer in zip(export_set.segments, layer_of, strict=True)
        ],
    }
