"""Tiny synthetic datasets in each ``eval`` layout: 64x64 images (or a 64x64x8 volume) with bright shapes on a dark
background, so LiteMedSAM segments them almost perfectly from a box and every layout's path can be checked fast."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

SIZE = 64


def disc(center: tuple[int, int], radius: int, size: int = SIZE) -> np.ndarray:
    rows, cols = np.ogrid[:size, :size]
    return (cols - center[0]) ** 2 + (rows - center[1]) ** 2 <= radius**2


def square(x0: int, y0: int, x1: int, y1: int, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def image_of(*masks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Dark noisy background, each mask a bright flat shape (different brightness per shape)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(30, 4, (SIZE, SIZE))
    for n, mask in enumerate(masks):
        image[mask] = 200 - 30 * n
    return np.clip(image, 0, 255).astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    return png(mask.astype(np.uint8) * 255)


def box_of(mask: np.ndarray) -> list[int]:
    jj, ii = np.nonzero(mask)
    return [int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())]


# --- U-MRG parquet ------------------------------------------------------------------------------------------------

UMRG_SHAPES = {
    "u1": disc((30, 34), 12),
    "u2": square(12, 14, 40, 36),
    "u3": disc((40, 24), 9),
}


def umrg_rows() -> list[dict]:
    """Rows in MedReasoner's RL parquet structure (verl UMRGDataset / eval.py read exactly these fields)."""
    rows = []
    for n, (sample_id, mask) in enumerate(UMRG_SHAPES.items()):
        jj, ii = np.nonzero(mask)
        cx, cy = float(ii.mean()), float(jj.mean())
        truth = {"bbox_2d": box_of(mask), "point_2d": [[cx - 4, cy], [cx + 4, cy]]}
        rows.append(
            {
                "data_source": "U-MRG-14K",
                "images": [{"bytes": png(image_of(mask, seed=n)), "path": None}],
                "masks": [{"bytes": mask_png(mask), "path": None}],
                "prompt": [{"role": "user", "content": f"<image>Which region looks abnormal in image {n}?"}],
                "ability": "grounding",
                "reward_model": {"style": "rule", "ground_truth": json.dumps(truth)},
                "extra_info": {
                    "id": sample_id,
                    "category": "disc" if "u2" != sample_id else "square",
                    "supercategory": "synthetic",
                    "index": n,
                },
            }
        )
    return rows


def write_umrg(folder: Path, rows: list[dict] | None = None, name: str = "test-00000-of-00001.parquet") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pq.write_table(pa.Table.from_pylist(rows if rows is not None else umrg_rows()), path, row_group_size=2)
    return path


# --- MR-MedSeg dialogues -----------------------------------------------------------------------------------------

MR_FIRST = disc((22, 22), 10)
MR_SECOND = square(36, 34, 54, 52)


def write_mrmedseg(folder: Path) -> Path:
    """One two-round dialogue in MediRound's data_sample.json structure: round 2 refers to round 1's output."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    (folder / "images" / "case_0001.png").write_bytes(png(image_of(MR_FIRST, MR_SECOND)))
    (folder / "masks" / "case_0001_round_00.png").write_bytes(mask_png(MR_FIRST))
    (folder / "masks" / "case_0001_round_01.png").write_bytes(mask_png(MR_SECOND))
    data = [
        {
            "task": "segmentation",
            "base": "[null]",
            "conversations": [
                {"from": "human", "value": "[IMAGE256:images/case_0001.png] Segment the target region in the image."},
                {"from": "gpt", "value": "[MASK-DECODE:masks/case_0001_round_00.png]."},
                {
                    "from": "human",
                    "value": "[MASK-ENCODE:masks/case_0001_round_00.png][BOX-ENCODE:masks/case_0001_round_00.png] "
                    "Segment the region below and right of the previous output.",
                    "ind": 0,
                },
                {
                    "from": "gpt",
                    "value": "It is [REF-DECODE:masks/case_0001_round_00.png][MASK-DECODE:masks/case_0001_round_01.png].",
                },
            ],
        }
    ]
    path = folder / "mr_medseg_test.json"
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


# --- folder of volumes -------------------------------------------------------------------------------------------


def blob_volume_and_labels(depth: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A 64x64x``depth`` volume: label 1 a bright ball-like blob through the middle slices, label 2 a square."""
    rng = np.random.default_rng(3)
    image = rng.normal(100, 8, (depth, SIZE, SIZE))
    labels = np.zeros((depth, SIZE, SIZE), dtype=np.uint8)
    for k in range(depth):
        radius = [0, 6, 9, 11, 11, 9, 6, 0][k] if depth == 8 else 8
        if radius:
            labels[k][disc((24, 30), radius)] = 1
    labels[2:6][:, 40:54, 40:54] = 2
    image[labels == 1] = 900
    image[labels == 2] = 600
    return image.astype(np.int16), labels


def write_folder(folder: Path, *, dialogue: bool = True) -> Path:
    """A folder dataset: the volume as NRRD, its label map, and questions (one single question, one dialogue)."""
    import SimpleITK as sitk

    from MedSegReasoning.volume.core import Geometry
    from MedSegReasoning.volume.itk_io import write_label_image

    folder.mkdir(parents=True, exist_ok=True)
    image, labels = blob_volume_and_labels()
    geometry = Geometry.from_arrays((-30.0, -20.0, 10.0), (0.8, 0.8, 2.5), np.eye(3))
    itk = sitk.GetImageFromArray(image)
    itk.SetOrigin(geometry.origin)
    itk.SetSpacing(geometry.spacing)
    sitk.WriteImage(itk, str(folder / "vol1.nrrd"))
    write_label_image(folder / "vol1_labels.nrrd", labels, geometry)
    lines = [
        {
            "id": "single-blob",
            "volume": "vol1.nrrd",
            "labels": "vol1_labels.nrrd",
            "label": 1,
            "name": "blob",
            "category": "blob",
            "question": "Segment the round bright blob.",
        },
    ]
    if dialogue:
        lines += [
            {
                "dialogue": "d1",
                "round": 1,
                "volume": "vol1.nrrd",
                "labels": "vol1_labels.nrrd",
                "label": 1,
                "name": "blob",
                "question": "Segment the round bright blob.",
            },
            {
                "dialogue": "d1",
                "round": 2,
                "reference": 1,
                "volume": "vol1.nrrd",
                "labels": "vol1_labels.nrrd",
                "label": 2,
                "name": "square",
                "question": "Now segment the square as well.",
            },
        ]
    (folder / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return folder


def locate_answer(mask2d: np.ndarray, label: str, slice_index: int = 0) -> str:
    """A contract answer (pixels convention) with the mask's box and two points inside it."""
    x0, y0, x1, y1 = box_of(mask2d)
    jj, ii = np.nonzero(mask2d)
    cx, cy = int(ii.mean()), int(jj.mean())
    return json.dumps(
        {
            "reasoning": f"The {label} is the bright region.",
            "targets": [
                {
                    "slice": slice_index,
                    "bbox": [x0, y0, x1, y1],
                    "points": [[cx - 3, cy], [cx + 3, cy]],
                    "label": label,
                    "ref": None,
                }
            ],
            "clarification": None,
        }
    )


def write_replay(path: Path, answers: list[str]) -> Path:
    path.write_text("".join(json.dumps({"raw": a}) + "\n" for a in answers), encoding="utf-8")
    return path
