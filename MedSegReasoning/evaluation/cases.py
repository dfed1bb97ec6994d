"""A real labelled 3D case that builds offline: the MNI152 2009a T1 template with its left caudate nucleus.

nilearn ships the ICBM 2009a symmetric template with its grey- and white-matter probability maps (tissue maps
derived from the segmentations of 152 brains). The label here is the head and body of the left caudate nucleus:
deep grey matter (grey-matter probability above 50 % and above white matter's, at least 20 mm inside the brain),
whose larger components beside the frontal horns are the two caudate nuclei; the one with the larger i lies on
the patient's left (the template is stored LPS). ``sample.left_caudate`` finds it, as it does for the demo box.

The case is written as the ``folder`` layout: a DICOM MR series, a label map (NRRD, on exactly the series' grid)
and ``questions.jsonl``. ``step`` keeps every step-th axial slice and the volume is cut to the caudate's slices
plus ``margin`` on each side, so a test stays cheap (LiteMedSAM encodes every slice it propagates through).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..volume.core import Geometry

CAUDATE_LABEL = 1


def build_caudate_case(out_dir: str | Path, *, step: int = 4, margin: int = 1) -> Path:
    """Write the case into ``out_dir`` (``volume/`` DICOM series, ``labels.nrrd``, ``questions.jsonl``); return it."""
    from ..sample import INTENSITY_SCALE, _load_template, left_caudate
    from ..volume.dicom_writer import SeriesDescriptors, write_dicom_series
    from ..volume.itk_io import write_label_image

    out_dir = Path(out_dir)
    t1, gm, wm = _load_template()
    caudate = left_caudate(gm, wm)[::step]
    image = (t1.array[::step].astype(np.int16) * INTENSITY_SCALE).astype(np.int16)
    slices = np.nonzero(caudate.any(axis=(1, 2)))[0]
    k0 = max(int(slices.min()) - margin, 0)
    k1 = min(int(slices.max()) + margin, caudate.shape[0] - 1)
    g = t1.geometry
    geometry = Geometry.from_arrays(
        g.index_to_physical(np.array([0.0, 0.0, float(k0 * step)]))[0],
        (g.spacing[0], g.spacing[1], g.spacing[2] * step),
        g.direction_matrix,
    )
    write_dicom_series(
        image[k0 : k1 + 1],
        geometry,
        out_dir / "volume",
        modality="MR",
        descriptors=SeriesDescriptors(
            patient_name="MNI152^Template",
            patient_id="MNI152-2009A",
            study_description="MedSegReasoning evaluation case",
            series_description=f"MNI152 2009a T1, every {step}th slice",
        ),
        rng=np.random.default_rng(152),
    )
    write_label_image(out_dir / "labels.nrrd", caudate[k0 : k1 + 1].astype(np.uint8) * CAUDATE_LABEL, geometry)
    question = {
        "id": "mni152-left-caudate",
        "volume": "volume",
        "labels": "labels.nrrd",
        "label": CAUDATE_LABEL,
        "name": "left caudate nucleus",
        "category": "caudate nucleus",
        "question": "Segment the left caudate nucleus.",
    }
    (out_dir / "questions.jsonl").write_text(json.dumps(question) + "\n", encoding="utf-8")
    return out_dir
