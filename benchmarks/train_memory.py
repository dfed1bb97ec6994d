"""Peak memory of ``train``'s data preparation: the rows held in memory (the path before issue #18's streaming)
against the rows streamed to Arrow files on disk (``training.stream``), on the same synthetic U-MRG set.

Run from the project root::

    .venv/bin/python benchmarks/train_memory.py                       # 300 images of 512 x 512
    .venv/bin/python benchmarks/train_memory.py --images 1000 --paths new  # the streamed path alone

The set is ``support.grounding``'s (grey ellipses on smooth noise) written as U-MRG parquet by
``support.grounding_product.umrg_rows``, a chunk at a time. Each path runs in its own subprocess (so each peak is its
own), prepares what ``train`` prepares before the model loads, keeps it alive as a run does, and reports its peak RSS
(``ru_maxrss``) and the floor both share (the peak after the imports and one sample's preparation, which loads what
every run loads once: the label coder's embedding model, PIL's plugins):

- ``sft old``: ``load_samples`` (every sample's pixels), ``sample_row`` of each (PIL images), ``Dataset.from_list``
  (an in-memory Arrow table), as ``command._prepare`` did;
- ``sft new``: ``stream.build_rows`` (one unit at a time into ``OUT/dataset-cache``, memory-mapped);
- ``grpo-mask old``: the same with ``keep_volumes=True`` and an eager ``RewardSample`` per sample;
- ``grpo-mask new``: ``build_rows`` and lazy reward samples (``stream.reward_samples``), each loaded once as a
  scoring pass would (through ``UnitVolumes``' bound).

Writes ``benchmarks/_output/train_memory.json``. Findings: docs/training.md, "The train command" (memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

CHUNK = 50


def write_set(folder: Path, images: int, size: int, seed: int = 7) -> Path:
    """``images`` synthetic grounding images of ``size`` px as one U-MRG parquet file, written a chunk at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from support.grounding import make_grounding_set
    from support.grounding_product import umrg_rows

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data-00000-of-00001.parquet"
    writer = None
    for start in range(0, images, CHUNK):
        data = make_grounding_set(min(CHUNK, images - start), seed + start, size=size)
        table = pa.Table.from_pylist(umrg_rows(data, f"c{start:06d}-"))
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=CHUNK)
    if writer is not None:
        writer.close()
    return path


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def old_prepare(dataset, prompts, convention, *, with_answer: bool, keep_volumes: bool):
    """What ``command._prepare`` did before the rows were streamed (kept here for the comparison only): every
    sample with its pixels (``run["skipped"]`` held the ``SampleSet``), the rows as a list, the in-memory table."""
    import datasets

    from MedSegReasoning.training.samples import load_samples, sample_row
    from MedSegReasoning.training.stream import reward_samples

    found = load_samples(dataset, keep_volumes=keep_volumes)
    rows = [sample_row(s, prompts, convention, with_answer=with_answer) for s in found.samples]
    samples = {s.id: s.without_pixels() if not keep_volumes else s for s in found.samples}
    rewards = reward_samples(samples, convention) if keep_volumes else {}
    return found, rows, samples, rewards, datasets.Dataset.from_list(rows)


def new_prepare(dataset, prompts, convention, *, with_answer: bool, keep_volumes: bool, cache_dir: Path):
    """``command._prepare`` now: the rows streamed to disk; for the mask reward, lazy samples loaded once each."""
    from MedSegReasoning.training.mask_reward import LazyRewardSample
    from MedSegReasoning.training.stream import build_rows, reward_samples

    table, found = build_rows(dataset, prompts, convention, with_answer=with_answer, cache_dir=cache_dir)
    samples = {s.id: s for s in found.samples}
    rewards = reward_samples(samples, convention) if keep_volumes else {}
    for entry in rewards.values():  # a scoring pass: each sample's volume read, a few held at a time
        assert isinstance(entry, LazyRewardSample)
        entry.load()
    return found, samples, rewards, table


def child(mode: str, method: str, parquet: Path, cache_dir: Path) -> dict:
    import datasets  # noqa: F401  (imported by both paths: part of the floor)
    import PIL.Image  # noqa: F401

    from MedSegReasoning.evaluation.layouts import open_dataset
    from MedSegReasoning.reasoning.coords import get_convention
    from MedSegReasoning.reasoning.prompts import prompt_set
    from MedSegReasoning.training import mask_reward, samples, stream  # noqa: F401

    dataset = open_dataset(parquet, "umrg")
    prompts, convention = prompt_set("contract"), get_convention("qwen2.5-vl")
    with_answer, keep = method == "sft", method == "grpo-mask"
    warm_up = next(samples.iter_samples(dataset, samples.SampleSet([])))  # the label coder's model, PIL's plugins...
    samples.sample_row(warm_up, prompts, convention, with_answer)
    del warm_up
    floor = _peak_mib()
    t0 = time.perf_counter()
    if mode == "old":
        held = old_prepare(dataset, prompts, convention, with_answer=with_answer, keep_volumes=keep)
    else:
        held = new_prepare(
            dataset, prompts, convention, with_answer=with_answer, keep_volumes=keep, cache_dir=cache_dir
        )
    seconds = time.perf_counter() - t0
    return {
        "mode": mode,
        "method": method,
        "samples": len(held[0].samples),
        "floor_mib": round(floor, 1),
        "peak_mib": round(_peak_mib(), 1),
        "seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--paths", default="old,new", help="which preparations to run (old,new; new alone: larger sets)"
    )
    parser.add_argument("--methods", default="sft,grpo-mask", help="sft, grpo-mask or both")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "METHOD", "PARQUET", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, method, parquet, cache = args.child
        print(json.dumps(child(mode, method, Path(parquet), Path(cache))))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        t0 = time.perf_counter()
        parquet = write_set(Path(tmp) / "umrg", args.images, args.size)
        print(f"{args.images} images of {args.size} px written in {time.perf_counter() - t0:.0f} s", flush=True)
        for method in args.methods.split(","):
            for mode in args.paths.split(","):
                cache = Path(tmp) / f"cache-{method}-{mode}"
                command = [sys.executable, __file__, "--child", mode, method, str(parquet), str(cache)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                results.append(result)
                print(
                    f"{method:9s} {mode}: peak RSS {result['peak_mib']:7.1f} MiB (floor "
                    f"{result['floor_mib']:.1f}; {result['samples']} samples in {result['seconds']} s)",
                    flush=True,
                )
    out = ROOT / "benchmarks" / "_output" / "train_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": args.images, "size": args.size, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
