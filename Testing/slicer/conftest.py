"""Fixtures of the Slicer-side tests: three slices of the real CT, as the Slicer module would send them."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from support.ct_reference import reference_labels_on_ct_grid

from MedSegReasoning.slicer.backend_link import BackendLink

FIRST = 17  # the crop: slices 17, 18, 19 of the series


@dataclass
class CT3:
    array: np.ndarray
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: np.ndarray
    truth: dict[str, np.ndarray]  # organ -> [k, j, i] bool on the crop

    def send_to(self, link: BackendLink) -> None:
        link.set_volume(self.array, self.origin, self.spacing, self.direction, "CT")


@pytest.fixture(scope="session")
def ct3(shared_ct) -> CT3:
    from MedSegReasoning.volume import load_volume

    volume = load_volume(shared_ct / "dicom")
    labels = reference_labels_on_ct_grid(shared_ct, volume)[FIRST : FIRST + 3]
    names = {v: int(k) for k, v in json.loads((shared_ct / "labels.json").read_text()).items()}
    g = volume.geometry
    direction = np.asarray(g.direction, dtype=float)
    origin = np.asarray(g.origin) + direction @ (np.asarray(g.spacing) * np.array([0.0, 0.0, FIRST]))
    truth = {name: labels == names[name] for name in ("spleen", "liver", "aorta", "stomach")}
    array = np.ascontiguousarray(volume.array[FIRST : FIRST + 3])
    return CT3(array, tuple(float(x) for x in origin), tuple(g.spacing), direction, truth)
