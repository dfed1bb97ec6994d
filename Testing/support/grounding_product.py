"""The synthetic grounding task (``support.grounding``) as the product sees it: a U-MRG parquet dataset that
``train`` and ``eval`` read, and the learning recipe's tiny Qwen2.5-VL saved as a checkpoint ``hf:FOLDER`` loads.

Used by ``benchmarks/train_command_probe.py`` (issue #18, "proof that it learns" through the ``train`` command
rather than a hand-written loop), and by ``support.grounding_rows`` and the learning test (the parquet writer, the
tokenizer's corpus, the command-line runner and ``eval``'s box IoU).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .grounding import QUESTION, GroundingSet, make_grounding_set
from .grounding_training import LEARNING_RECIPE, Recipe, build


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def umrg_rows(data: GroundingSet, prefix: str) -> list[dict]:
    """``data`` in MedReasoner's U-MRG parquet structure (the fields ``eval``'s U-MRG layout reads).

    The image is stored as one grey channel repeated (``make_grounding_set`` makes grey RGB images); the box is
    inclusive pixels as U-MRG writes ``bbox_2d``; no ``point_2d`` (the trainer then picks two inner points)."""
    rows = []
    for n in range(len(data)):
        x0, y0, x1, y1 = (int(v) for v in data.boxes[n])
        truth = {"bbox_2d": [x0, y0, x1 - 1, y1 - 1]}
        rows.append(
            {
                "data_source": "synthetic-grounding",
                "images": [{"bytes": _png(data.images[n]), "path": None}],
                "masks": [{"bytes": _png(data.masks[n].astype(np.uint8) * 255), "path": None}],
                "prompt": [{"role": "user", "content": f"<image>{QUESTION}"}],
                "ability": "grounding",
                "reward_model": {"style": "rule", "ground_truth": json.dumps(truth)},
                "extra_info": {
                    "id": f"{prefix}{n:05d}",
                    "category": "lesion",
                    "supercategory": "synthetic",
                    "index": n,
                },
            }
        )
    return rows


def write_umrg(data: GroundingSet, folder: Path, prefix: str = "g") -> Path:
    """Write ``data`` as ``folder/data-00000-of-00001.parquet``; returns the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(umrg_rows(data, prefix)), path, row_group_size=256)
    return path


def product_corpus(n: int = 64, seed: int = 7) -> list[str]:
    """The text a tokenizer for the product's prompts learns its merges from: every shipped prompt template, and the
    ``brief-v1`` prompt and segzero answer ``train`` renders for ``n`` synthetic samples (``training.samples``)."""
    import tempfile

    from MedSegReasoning.evaluation.layouts import open_dataset
    from MedSegReasoning.reasoning.coords import get_convention
    from MedSegReasoning.reasoning.prompts import PromptSet
    from MedSegReasoning.training.samples import load_samples, prompt_text, target_text

    templates = Path(__file__).resolve().parents[2] / "MedSegReasoning" / "data" / "prompts"
    texts = [p.read_text(encoding="utf-8") for p in sorted(templates.glob("*.txt"))]
    prompts, convention = PromptSet("segzero", "brief-v1"), get_convention("qwen2.5-vl")
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        samples = load_samples(open_dataset(write_umrg(make_grounding_set(n, seed), Path(tmp)).parent)).samples
        texts += [prompt_text(s, prompts, convention) + target_text(s, prompts, convention) for s in samples]
    return texts


def save_recipe_base(folder: Path, recipe: Recipe = LEARNING_RECIPE, tokenizer: str = "bytes") -> Path:
    """The recipe's random-weight Qwen2.5-VL (``grounding_training.build``: rope_theta 4, mrope_section [2, 3, 3],
    hidden 64, ...) saved with its processor, as ``support.reasoning.build_tiny_qwen`` saves the tests' models.
    ``tokenizer``: ``bytes`` (one token per byte) or ``prompt`` (merges learned from :func:`product_corpus`)."""
    from .reasoning import prompt_tokenizer

    model, processor = build(recipe, prompt_tokenizer(product_corpus()) if tokenizer == "prompt" else None)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    # asked as the trained model will be (the runtime reads this record), so the untrained score is comparable
    record = {"convention": "qwen2.5-vl", "prompt_style": "segzero", "prompt_version": "brief-v1"}
    (folder / "medseg_reasoner.json").write_text(json.dumps(record), encoding="utf-8")
    return folder


REPO = Path(__file__).resolve().parents[2]

COMMAND_RECIPE = {
    "steps": 600,
    "batch": 32,
    "learning_rate": 2e-3,
    "prompt_style": "segzero",
    "prompt_version": "brief-v1",
    "save_steps": 10_000,
    "logging_steps": 25,
    "seed": 0,
}
"""The ``train --config`` settings of the command-line proof: the probe's step count, batch and learning rate
(``grounding_training.LEARNING_RECIPE``), TRL's default schedule (linear decay, no warm-up: the ``train`` command has
no scheduler setting), the segzero answer with the short ``brief-v1`` prompt (a 112x112 sample is ~480 byte tokens
instead of ~1100 with ``segzero-v1``)."""


def run_cli(*args: str, threads: int = 1) -> subprocess.CompletedProcess:
    """``python -m MedSegReasoning.cli ARGS`` from this checkout, on ``threads`` torch threads."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "LC_ALL": "C.UTF-8",
    }
    return subprocess.run(
        [sys.executable, "-m", "MedSegReasoning.cli", *args], env=env, capture_output=True, text=True, check=False
    )


def train_sft(dataset: Path, base: Path, out: Path, settings: dict, full: bool = True) -> float:
    """``train sft DATASET --base hf:BASE --out OUT [--full] --config FILE``; returns its wall seconds."""
    config = out.with_name(out.name + "-config.json")
    config.write_text(json.dumps(settings), encoding="utf-8")
    start = time.perf_counter()
    done = run_cli(
        "train",
        "sft",
        str(dataset),
        "--base",
        f"hf:{base}",
        "--out",
        str(out),
        "--config",
        str(config),
        "--force",
        *(["--full"] if full else []),
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"train exited {done.returncode}: {done.stderr[-3000:]}")
    return seconds


def eval_box_iou(dataset: Path, model: Path, out: Path, max_new_tokens: int = 256) -> np.ndarray:
    """Each held-out question's box IoU from ``eval --mode reasoner --reasoner hf:MODEL`` (a failed answer: 0)."""
    done = run_cli(
        "eval",
        str(dataset),
        "--mode",
        "reasoner",
        "--reasoner",
        f"hf:{model}",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--force",
        "--no-progress",
        "--max-new-tokens",
        str(max_new_tokens),
    )
    if done.returncode != 0:
        raise RuntimeError(f"eval exited {done.returncode}: {done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    return np.array([r["box_iou"] or 0.0 for r in records], dtype=float)
