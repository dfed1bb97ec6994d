"""Training data without the dataset in memory: the TRL rows written to disk one sample at a time, and the mask
reward's volumes read again when they are scored.

Why: a research group's U-MRG-14K (14,000 images, many 512-1024 px) or a 3D folder cohort does not fit in memory
as rendered rows, and used to be held several times over (the samples' view images, the rows' PIL images, the
in-memory Arrow table, and for GRPO's mask reward every volume).

- ``build_rows`` runs ``samples.iter_samples`` (one dataset unit loaded at a time) through ``samples.sample_row``
  into ``datasets.Dataset.from_generator``, which writes the rows as Arrow files under ``cache_dir`` (``train``:
  ``OUT/dataset-cache``) and memory-maps them; only pixel-free samples (``TrainSample.without_pixels``) are kept,
  for the rewards. The rows are exactly ``sample_row``'s (the images stored losslessly as PNG, as
  ``Dataset.from_list`` of the same rows stores them, and read back as PIL images).
- ``UnitVolumes`` is the mask reward's loader: the last ``max_units`` units' cases, least recently used dropped
  first; ``reward_samples`` gives a sample kept without its volume a ``mask_reward.LazyRewardSample`` reading
  through it. A unit loads the same voxels every time, so the volume's content hash, on which the segmenter's
  embedding cache and store keys are built, is the eager one's.
"""

from __future__ import annotations

import shutil
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.layouts import Case, Dataset
from ..reasoning.coords import Convention
from ..reasoning.prompts import PromptSet
from ..reasoning.views import DEFAULT_STRATEGY, ReasoningStrategy
from ..volume.core import Volume
from .mask_reward import LazyRewardSample, RewardSample
from .samples import SampleSet, SampleSource, TrainSample, iter_samples, require_usable, sample_row

DATASET_CACHE_DIR = "dataset-cache"
"""The rows' Arrow files in ``--out``: rebuilt by every run (fresh, ``--force``, ``--resume``), removed at its end."""

REWARD_VOLUMES = 4
"""How many units' volumes (with their truths) the mask reward holds at once: a GRPO batch scores a few prompts,
each prompt's completions together."""


def row_features(with_answer: bool) -> Any:
    """The rows' ``datasets.Features``: conversational ``prompt`` (and ``completion``), the images, the sample id."""
    import datasets

    message = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
    features: dict[str, Any] = {
        "prompt": message,
        "images": datasets.List(datasets.Image()),
        "sample_id": datasets.Value("string"),
    }
    if with_answer:
        features["completion"] = message
    return datasets.Features(features)


def build_rows(
    dataset: Dataset,
    prompts: PromptSet,
    convention: Convention,
    *,
    with_answer: bool,
    cache_dir: Path,
    strategy: ReasoningStrategy = DEFAULT_STRATEGY,
) -> tuple[Any, SampleSet]:
    """The TRL dataset of ``dataset``'s usable samples, backed by Arrow files in ``cache_dir`` (any previous content
    removed first), and the samples without their pixels with what was skipped. Raises ``InputError`` (the message
    of ``samples.load_samples``) when no sample is usable, leaving no cache behind."""
    import datasets

    found = SampleSet([])

    def rows():
        for sample in iter_samples(dataset, found, strategy=strategy):
            row = sample_row(sample, prompts, convention, with_answer)
            row["images"] = [{"bytes": png_bytes(image), "path": None} for image in row["images"]]
            found.samples.append(sample.without_pixels())
            yield row

    made_parent = not cache_dir.parent.exists()
    _remove(cache_dir)
    try:
        try:
            table = datasets.Dataset.from_generator(
                rows,
                features=row_features(with_answer),
                cache_dir=str(cache_dir),
                fingerprint=uuid.uuid4().hex,  # never reuse an earlier build (and never hash the generator)
            )
        except datasets.exceptions.DatasetGenerationError as exc:  # what went wrong while reading the dataset
            raise (exc.__cause__ or exc) from None
        except ValueError:
            if found.samples:
                raise
            table = None  # no row at all: datasets refuses an empty split; the error below says why
        require_usable(dataset, found)
    except BaseException:
        _remove(cache_dir)
        if made_parent and cache_dir.parent.is_dir() and not any(cache_dir.parent.iterdir()):
            cache_dir.parent.rmdir()
        raise
    return table, found


def png_bytes(image: Any) -> bytes:
    """A PIL image as PNG (lossless) at zlib level 1: ``datasets.Image`` would encode each row's first image twice
    (``encode_nested_example`` encodes one to see whether the list needs encoding) at the default level, three
    times the cost for files only this run reads."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _remove(folder: Path) -> None:
    if folder.is_dir():
        shutil.rmtree(folder)


class UnitVolumes:
    """The mask reward's volume loader: the cases of the last ``max_units`` units read, least recently used dropped
    first (and dropped before the next one loads, so no more than ``max_units`` are ever held here). ``loads``
    counts ``Unit.load`` calls."""

    def __init__(self, max_units: int = REWARD_VOLUMES) -> None:
        if max_units < 1:
            raise ValueError(f"max_units must be at least 1, got {max_units}")
        self.max_units = max_units
        self.loads = 0
        self._cases: OrderedDict[str, Case] = OrderedDict()

    def fetch(self, source: SampleSource) -> tuple[Volume, np.ndarray]:
        """The volume of ``source``'s unit and the bool ``[k, j, i]`` truth of its round."""
        key = source.unit.id
        case = self._cases.get(key)
        if case is None:
            while len(self._cases) >= self.max_units:
                self._cases.popitem(last=False)
            case = source.unit.load()
            self.loads += 1
            self._cases[key] = case
        else:
            self._cases.move_to_end(key)
        return case.volume, np.asarray(case.turns[source.round - 1].truth, dtype=bool)

    def __len__(self) -> int:
        return len(self._cases)


def reward_samples(
    samples: Mapping[str, TrainSample], convention: Convention, volumes: UnitVolumes | None = None
) -> dict[str, RewardSample | LazyRewardSample]:
    """The mask reward's sample for each training sample: eager where the sample holds its volume and truth
    (``load_samples(keep_volumes=True)``), else lazy through ``volumes`` (a new ``UnitVolumes`` by default) where it
    names its ``source``; a sample with neither is left out."""
    volumes = volumes if volumes is not None else UnitVolumes()
    out: dict[str, RewardSample | LazyRewardSample] = {}
    for sid, s in samples.items():
        if s.volume is not None and s.truth_volume is not None:
            out[sid] = RewardSample(s.volume, s.window, s.views, convention, s.truth_volume, s.context)
        elif s.source is not None:
            out[sid] = LazyRewardSample(partial(volumes.fetch, s.source), s.window, s.views, convention, s.context)
    return out
