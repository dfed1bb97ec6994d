"""Cold start of ``medseg-reasoning ask``, and encoding ahead: reasoner answer -> first mask (issue #13, "Speed").

Run from the project root::

    .venv/bin/python benchmarks/cold_start.py [--repeats 3] [--ct ../shared/data/ct-abdomen-dicom] [--quick]

**Cold start.** Seconds from launching ``medseg-reasoning ask CT --box ... --no-propagate`` (a fresh Python process,
as the console script runs it) to the start of its first encoder call, on the second run after install: a first,
untimed run in a fresh cache folder (``MEDSEG_CACHE_DIR``) builds the ONNX exports, OpenVINO's compiled blob and the
weights digest record; before every timed run the embedding store is emptied, so the encoder really runs. The child
finds the first call by wrapping ``LiteMedSAMSegmenter._encode`` when its module is imported (an import hook: nothing
is imported earlier than ``ask`` imports it) and, after ``ask`` has finished, times the same encoder on the same slice
three more times in the same process: "one encoder call" is their median. Goal: cold start <= 1.5x one encoder call.
The baseline is the engine as it was before the torch-free start (``BASELINE_COMMIT``, unpacked with ``git archive``
into a temp folder and run the same way, with its own cache folder), interleaved with the current code run by run so
both see the same load; ``--no-baseline`` skips it.

**Encoding ahead.** In one process, the real LiteMedSAM and a scripted reasoner that takes ``--think-s`` seconds per
step (pick the key slice on the montage, then place the box on it) for the liver on its largest slice of the CT.
Measured: from the moment the reasoner returns its answer to the moment the key slice's first mask exists (the
rest of ``run_reasoning``, cancelling the worker, ``segment_prompt`` without propagation), with an ``EncodeAhead``
worker hooked into ``run_reasoning`` (``on_views``) and without, both as a ratio to one encoder call measured in the
same run. Goal: <= 0.2x one encoder call with encoding ahead (the key slice is among the shown ones here). The
embedding caches are emptied before every run and the disk store is off.

Prints a table and writes ``benchmarks/_output/cold_start.json`` (or ``--json PATH``); ``figures`` in the JSON lists
each figure with its baseline and goal, ready for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CT = ROOT.parent / "shared" / "data" / "ct-abdomen-dicom"
DEFAULT_JSON = ROOT / "benchmarks" / "_output" / "cold_start.json"
BASELINE_COMMIT = "4832290490961b100eb3b75c673338c0a1e52e7a"
"""The last commit before the torch-free start, the weights digest record and the background model build."""
ASK_BOX = "300,180,420,300,10"  # README's example box on the CT (slice 10)
GOALS = {"cold_over_encoder": 1.5, "answer_to_mask_over_encoder": 0.2}
RESULT_TAG = "COLD-START-RESULT "

# The child: `ask` as the console script runs it, with the first encoder call noted when it starts.
CHILD = r"""
import importlib.abc, importlib.machinery, json, sys, time

NAME = "MedSegReasoning.segmentation.litemedsam"
seen = {}


def patch(module):
    cls = module.LiteMedSAMSegmenter
    encode = cls._encode

    def noted(self, image, *args, **kwargs):
        if "first_encode_wall" not in seen:
            seen["first_encode_wall"] = time.time()
            seen["torch_imported_before"] = "torch" in sys.modules
            heavy = ("torch", "timm", "torchvision", "transformers", "SimpleITK", "scipy", "highdicom", "matplotlib")
            seen["heavy_modules_before"] = [m for m in heavy if m in sys.modules]
            seen["call"] = (self, image)
            start = time.perf_counter()
            out = encode(self, image, *args, **kwargs)
            seen["first_encoder_s"] = time.perf_counter() - start
            return out
        return encode(self, image, *args, **kwargs)

    cls._encode = noted


class AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != NAME:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, AfterImport())
from MedSegReasoning.cli import main

code = main(sys.argv[1:])
segmenter, image = seen.pop("call")
times = []
for _ in range(3):
    start = time.perf_counter()
    segmenter._encode(image)
    times.append(time.perf_counter() - start)
seen.update(exit_code=code, encoder_s=sorted(times)[1], encoder_s_all=times)
seen["heavy_modules_at_exit"] = [m for m in ("torch", "timm", "torchvision") if m in sys.modules]
print("COLD-START-RESULT " + json.dumps(seen))
"""


# -- cold start ---------------------------------------------------------------------------------------------------
def unpack_baseline(commit: str, into: Path) -> Path | None:
    """The package as of ``commit`` in ``into`` (``git archive``: nothing in the working tree changes), or None."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "MedSegReasoning"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"baseline {commit[:10]} not available ({exc}): measuring the current code only", file=sys.stderr)
        return None
    return into


def ask_once(ct: Path, cache: Path, out: Path, workdir: Path, pythonpath: Path | None) -> dict:
    """One ``ask`` in a fresh process; its cold start (launch -> first encoder call) and its encoder times."""
    env = {**os.environ, "MEDSEG_CACHE_DIR": str(cache)}
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    shutil.rmtree(cache / "embeddings", ignore_errors=True)  # the slice's embedding must not come from disk
    command = [sys.executable, "-c", CHILD, "ask", str(ct / "dicom"), "--box", ASK_BOX, "--label", "spleen"]
    command += ["--no-propagate", "--out", str(out), "--force"]
    launched = time.time()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)  # cwd: no shadowing package
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"ask failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    seen = json.loads(lines[-1][len(RESULT_TAG) :])
    seen["cold_start_s"] = seen["first_encode_wall"] - launched
    return seen


def cold_start(ct: Path, repeats: int, baseline: bool, baseline_commit: str = BASELINE_COMMIT) -> dict:
    with tempfile.TemporaryDirectory(prefix="medseg-cold-") as tmp:
        work = Path(tmp)
        variants: dict[str, Path | None] = {"current": None}
        if baseline:
            (work / "baseline").mkdir()
            old = unpack_baseline(baseline_commit, (work / "baseline").resolve())
            if old is not None:
                variants["baseline"] = old
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for name, path in variants.items():  # the run after install: builds every cache (not timed)
            ask_once(ct, work / f"cache-{name}", work / f"out-{name}", work, path)
        for _ in range(repeats):
            for name, path in variants.items():
                runs[name].append(ask_once(ct, work / f"cache-{name}", work / f"out-{name}", work, path))
    result = {}
    for name, rows in runs.items():
        cold = [r["cold_start_s"] for r in rows]
        encoder = [r["encoder_s"] for r in rows]
        ratios = [c / e for c, e in zip(cold, encoder, strict=True)]
        result[name] = {
            "cold_start_s_median": statistics.median(cold),
            "encoder_s_median": statistics.median(encoder),
            "cold_over_encoder_median": statistics.median(ratios),  # per run: both from the same process
            "first_encoder_call_s_median": statistics.median(r["first_encoder_s"] for r in rows),
            "torch_imported_before_first_encode": any(r["torch_imported_before"] for r in rows),
            "heavy_modules_before_first_encode": sorted({m for r in rows for m in r.get("heavy_modules_before", [])}),
            "runs": rows,
        }
    return result


# -- encoding ahead -------------------------------------------------------------------------------------------------
class ScriptedReasoner:
    """Answers the two steps of ``run_reasoning`` for one target after ``think_s`` seconds each; notes when it answered."""

    def __init__(self, k: int, box: tuple[int, int, int, int], think_s: float) -> None:
        from MedSegReasoning.reasoning.base import ReasonerIdentity

        self.identity = ReasonerIdentity("scripted", "replay", "none", "voxel", "bench")
        self.k, self.box, self.think_s = k, box, think_s
        self.answered_at = 0.0

    def reason(self, views, question, context, on_text=None, cancel=None):
        from MedSegReasoning.reasoning.answer import Answer, Target

        time.sleep(self.think_s)
        if views.task == "pick_slice":
            target = Target(slice=self.k, label="liver")
        else:
            target = Target(slice=self.k, box=self.box, label="liver")
        self.answered_at = time.perf_counter()
        return Answer(reasoning="", targets=(target,), clarification=None, raw="")


def answer_to_first_mask(volume, window, segmenter, k: int, box, think_s: float, ahead) -> dict:
    """One question: the scripted reasoner thinks, answers; seconds from its answer to the key slice's first mask."""
    from MedSegReasoning.pipeline import segment_prompt
    from MedSegReasoning.reasoning import run_reasoning
    from MedSegReasoning.segmentation.encode_ahead import encoding_ahead

    segmenter.cache.clear()
    reasoner = ScriptedReasoner(k, box, think_s)
    encoded_before = segmenter.stats.encoder_calls
    with encoding_ahead(ahead, volume, window, owner="bench") as on_views:
        answer = run_reasoning(volume, reasoner, "Segment the liver.", window=window, on_views=on_views)
    hits, calls = segmenter.stats.cache_hits, segmenter.stats.encoder_calls
    segment_prompt(volume, segmenter, window, answer.targets[0].to_voxel_prompt(), propagate_3d=False)
    first_mask_s = time.perf_counter() - reasoner.answered_at
    return {
        "answer_to_first_mask_s": first_mask_s,
        "encoded_ahead": calls - encoded_before,
        "key_slice_cached": segmenter.stats.cache_hits > hits and segmenter.stats.encoder_calls == calls,
    }


def encode_ahead_figures(ct: Path, repeats: int, think_s: float) -> dict:
    sys.path[:0] = [str(ROOT / "Testing")]
    from support.ct_reference import reference_on_ct_grid

    from MedSegReasoning.segmentation.base import box_from_mask
    from MedSegReasoning.segmentation.encode_ahead import EncodeAhead
    from MedSegReasoning.segmentation.factory import create_segmenter
    from MedSegReasoning.volume import default_window, load_volume
    from MedSegReasoning.volume.windowing import render_slice

    volume = load_volume(ct / "dicom")
    window = default_window(volume)
    liver = reference_on_ct_grid(ct, volume, "liver")
    k = int(liver.sum(axis=(1, 2)).argmax())
    box = tuple(int(v) for v in box_from_mask(liver[k]))
    segmenter = create_segmenter("litemedsam")  # no disk store: every encoder call here is a real one
    image = render_slice(volume, k, window)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        segmenter._encode(image)
        times.append(time.perf_counter() - start)
    encoder_s = statistics.median(times[1:])
    runs: dict[str, list[dict]] = {"with": [], "without": []}
    with EncodeAhead(segmenter) as ahead:
        for _ in range(repeats):
            runs["with"].append(answer_to_first_mask(volume, window, segmenter, k, box, think_s, ahead))
            runs["without"].append(answer_to_first_mask(volume, window, segmenter, k, box, think_s, None))
    out = {"slice": {"organ": "liver", "k": k, "box": list(box)}, "think_s": think_s, "encoder_s_median": encoder_s}
    for name, rows in runs.items():
        seconds = statistics.median(r["answer_to_first_mask_s"] for r in rows)
        out[name] = {
            "answer_to_first_mask_s_median": seconds,
            "over_encoder": seconds / encoder_s,
            "key_slice_cached_runs": sum(r["key_slice_cached"] for r in rows),
            "runs": rows,
        }
    return out


# -- report -----------------------------------------------------------------------------------------------------
def figures(result: dict) -> list[dict]:
    """Each figure with its same-run baseline and the issue's goal (``goal``: [on, op, target] as run.py's Goal)."""
    rows = []
    cold = result.get("cold_start")
    if cold:
        now = cold["current"]
        rows.append(
            {
                "name": "ask: launch -> first encoder call",
                "value": now["cold_start_s_median"],
                "unit": "s",
                "baseline": "one encoder call (same process)",
                "baseline_value": now["encoder_s_median"],
                "ratio": now["cold_over_encoder_median"],
                "goal": ["ratio", "<=", GOALS["cold_over_encoder"]],
            }
        )
        if "baseline" in cold:
            old = cold["baseline"]
            rows.append(
                {
                    "name": f"ask: launch -> first encoder call, before ({result.get('baseline_commit', BASELINE_COMMIT)[:7]})",
                    "value": old["cold_start_s_median"],
                    "unit": "s",
                    "baseline": "one encoder call (same process)",
                    "baseline_value": old["encoder_s_median"],
                    "ratio": old["cold_over_encoder_median"],
                    "goal": None,
                }
            )
    ahead = result.get("encode_ahead")
    if ahead:
        for name, label in (("with", "with encoding ahead"), ("without", "without encoding ahead")):
            rows.append(
                {
                    "name": f"reasoner answer -> first mask, {label}",
                    "value": ahead[name]["answer_to_first_mask_s_median"],
                    "unit": "s",
                    "baseline": "one encoder call (same run)",
                    "baseline_value": ahead["encoder_s_median"],
                    "ratio": ahead[name]["over_encoder"],
                    "goal": ["ratio", "<=", GOALS["answer_to_mask_over_encoder"]] if name == "with" else None,
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'figure':58} {'value':>8} {'baseline':>9} {'ratio':>7}  goal")
    for r in rows:
        goal = f"{r['goal'][1]} {r['goal'][2]:g}x" if r["goal"] else ""
        met = ""
        if r["goal"]:
            met = "pass" if r["ratio"] <= r["goal"][2] else "FAIL"
        print(
            f"{r['name']:58} {r['value']:7.3f}{r['unit']} {r['baseline_value']:8.3f}s {r['ratio']:6.2f}x  {goal} {met}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=DEFAULT_CT, help="the real CT folder (with dicom/ and labels)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (default 3)")
    parser.add_argument("--think-s", type=float, default=3.0, help="the scripted reasoner's seconds per step")
    parser.add_argument("--no-baseline", action="store_true", help="skip the pre-change code's cold start")
    parser.add_argument(
        "--baseline-commit",
        default=BASELINE_COMMIT,
        help="the commit measured as the baseline (default: before the torch-free start)",
    )
    parser.add_argument("--only", choices=("cold", "ahead"), help="run one of the two parts")
    parser.add_argument("--quick", action="store_true", help="one run each, shorter thinking: checks that it runs")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if not (args.ct / "dicom").is_dir():
        print(f"the CT is not at {args.ct}: give --ct", file=sys.stderr)
        return 2
    repeats = 1 if args.quick else args.repeats
    think_s = min(args.think_s, 1.5) if args.quick else args.think_s
    result: dict = {"ct": str(args.ct), "repeats": repeats, "goals": GOALS, "baseline_commit": args.baseline_commit}
    if args.only in (None, "cold"):
        result["cold_start"] = cold_start(
            args.ct, repeats, baseline=not args.no_baseline, baseline_commit=args.baseline_commit
        )
    if args.only in (None, "ahead"):
        result["encode_ahead"] = encode_ahead_figures(args.ct, repeats, think_s)
    result["figures"] = figures(result)
    print_table(result["figures"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
