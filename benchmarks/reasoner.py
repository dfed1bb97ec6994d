"""Reasoner benchmark: our own work around the model per question, beside the model's own time and tokens/s.

Run from the project root::

    .venv/bin/python benchmarks/reasoner.py [--repeats 20] [--ct ../shared/data/ct-abdomen-dicom]
    .venv/bin/python benchmarks/reasoner.py --model hf:Qwen2.5-VL-7B-Instruct   # a real model (GPU machine)

One question runs the default two-look strategy (montage of 9 slices, then the key slice at full resolution).
What is timed, median of N:

- ours: rendering both views, the prompt text, image preparation outside the model, parsing and coordinate
  conversion of both answers -- everything between the volume and the model that this project owns
  (goal: <= 50 ms per question); plus, for the HTTP adapter, the server-safe resize and PNG/base64 encoding
  (as for a loopback server: stored PNG; a remote one compresses, about 20 ms more);
- transformers' processor (chat template + image preprocessing), which is outside the model but not ours;
- the model: a tiny random Qwen2.5-VL forced to a realistic answer (its wall time and tokens/s say that the
  streaming/generation plumbing adds nothing), or with ``--model`` a real checkpoint generating freely: time to
  first token, tokens/s and, on CUDA, peak GPU memory.

The volume is the real CT when present (512x512x20), else a synthetic 512x512x120 CT. Prints a table and writes
``benchmarks/_output/reasoner.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

from timing import median_seconds  # noqa: E402

GOAL_OURS_MS = 50.0
DEFAULT_CT = ROOT.parent / "shared" / "data" / "ct-abdomen-dicom"


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    return median_seconds(fn, repeats, warmup)[0] * 1000.0


def load_volume(ct: Path | None):
    if ct is not None and (ct / "dicom").is_dir():
        from MedSegReasoning.volume.loader import load_volume as load

        return load(ct / "dicom"), f"real CT {ct.name}"
    from support.reasoning import blob_volume

    return blob_volume((120, 512, 512)), "synthetic CT"


def answers_for(volume, key_slice: int) -> tuple[str, str]:
    """A realistic pick answer and locate answer (Qwen2.5-VL pixels of the 504x504 input of a 512x512 slice)."""
    nk, nj, ni = volume.shape
    pick = json.dumps(
        {
            "reasoning": "Jaundice points to biliary obstruction; the liver and the pancreatic head are best seen "
            "on the middle slices, so this slice is chosen.",
            "targets": [{"slice": key_slice, "label": "liver", "ref": None}],
            "clarification": None,
        }
    )
    locate = json.dumps(
        {
            "reasoning": "The liver fills the right upper abdomen (left of the image); its margin is smooth.",
            "targets": [
                {
                    "slice": key_slice,
                    "bbox": [40, 120, 260, 360],
                    "points": [[150, 240], [120, 200]],
                    "negative_points": [[300, 240]],
                    "label": "liver",
                    "ref": None,
                }
            ],
            "clarification": None,
        }
    )
    return pick, locate


def bench_ours(volume, repeats: int) -> dict[str, float]:
    from MedSegReasoning.reasoning import EMPTY_CONTEXT, get_convention, parse_answer
    from MedSegReasoning.reasoning.convert import to_answer
    from MedSegReasoning.reasoning.coords import SERVER_SAFE_RULE, resize_for_model
    from MedSegReasoning.reasoning.openai_compat import png_data_url
    from MedSegReasoning.reasoning.prompts import PromptSet, render_prompt
    from MedSegReasoning.reasoning.views import DEFAULT_STRATEGY, key_slice_views, refine_views
    from MedSegReasoning.volume.windowing import default_window

    window = default_window(volume)
    convention = get_convention("qwen2.5-vl")
    key = volume.shape[0] // 2
    pick_raw, locate_raw = answers_for(volume, key)
    question = "which structure explains the patient's jaundice?"
    prompts = PromptSet()
    convention.frame(512, 512)  # import transformers' smart_resize once, outside the timings

    state: dict = {}

    def render():
        state["pick"] = key_slice_views(volume, window, DEFAULT_STRATEGY)
        state["locate"] = refine_views(volume, window, DEFAULT_STRATEGY, "axial", key, ("liver",))

    def prompt():
        for name in ("pick", "locate"):
            render_prompt(prompts, state[name], question, EMPTY_CONTEXT, convention)

    def prepare():  # what ChatReasoner.prepare_image does before the processor (only fixed-840 resizes)
        for name in ("pick", "locate"):
            for view in state[name].views:
                resize_for_model(view.image, convention.model_input_size(view.width, view.height))

    def parse_convert():
        to_answer(parse_answer(pick_raw), state["pick"], convention, EMPTY_CONTEXT)
        to_answer(parse_answer(locate_raw), state["locate"], convention, EMPTY_CONTEXT)

    def http_encode():
        for name in ("pick", "locate"):
            for view in state[name].views:
                size = SERVER_SAFE_RULE.resized_size(view.width, view.height)
                png_data_url(resize_for_model(view.image, size), compress_level=0)  # the loopback setting

    render()
    timings = {
        "render_views": median_ms(render, repeats),
        "prompt_text": median_ms(prompt, repeats),
        "prepare_images": median_ms(prepare, repeats),
        "parse_and_convert": median_ms(parse_convert, repeats),
    }
    timings["ours_in_process"] = sum(timings.values())
    timings["http_resize_and_png"] = median_ms(http_encode, repeats)
    timings["ours_http"] = timings["ours_in_process"] + timings["http_resize_and_png"]
    return timings


def bench_tiny_model(volume, repeats: int) -> dict[str, float]:
    from support.reasoning import build_tiny_qwen, force

    from MedSegReasoning.reasoning import create_reasoner, run_reasoning
    from MedSegReasoning.reasoning.views import DEFAULT_STRATEGY, key_slice_views
    from MedSegReasoning.volume.windowing import default_window

    folder = build_tiny_qwen("qwen2_5_vl", Path(tempfile.mkdtemp()) / "tiny")
    reasoner = create_reasoner(f"hf:{folder}", max_new_tokens=1024)
    key = volume.shape[0] // 2
    pick, locate = answers_for(volume, key)
    window = default_window(volume)

    runs = []
    for n in range(repeats + 1):
        force(reasoner, pick, locate)
        start = time.perf_counter()
        answer = run_reasoning(volume, reasoner, "which structure explains the patient's jaundice?", window=window)
        wall = time.perf_counter() - start
        if n:  # the first run warms up
            runs.append((wall, answer.stats))

    # transformers' own preprocessing (chat template + image processor) for the montage step, outside generate
    views = key_slice_views(volume, window, DEFAULT_STRATEGY)
    from PIL import Image

    image = Image.fromarray(views.views[0].image)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x" * 2000}]}]

    def processor():
        text = reasoner.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        reasoner.processor(text=[text], images=[image], return_tensors="pt")

    generated = statistics.median(s.generated_tokens for _, s in runs)
    model_s = statistics.median(s.seconds for _, s in runs)
    return {
        "question_wall_ms": statistics.median(w for w, _ in runs) * 1000,
        "model_generate_ms": model_s * 1000,
        "generated_tokens": generated,
        "tokens_per_s": generated / model_s,
        "first_token_ms": statistics.median(s.first_token_seconds for _, s in runs) * 1000,
        "prompt_tokens": statistics.median(s.prompt_tokens for _, s in runs),
        "processor_montage_ms": median_ms(processor, repeats),
        "parameters": sum(p.numel() for p in reasoner.model.parameters()),
    }


def bench_real_model(volume, spec: str) -> dict[str, float | str]:
    """A real checkpoint generating freely: time to first token, tokens/s, peak GPU memory (CUDA)."""
    import torch

    from MedSegReasoning.reasoning import ReasonerOutputError, create_reasoner, run_reasoning

    reasoner = create_reasoner(spec, max_new_tokens=512)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        answer = run_reasoning(volume, reasoner, "which structure explains the patient's jaundice?")
        stats, outcome = answer.stats, f"{len(answer.targets)} target(s)"
    except ReasonerOutputError as exc:
        stats, outcome = None, f"unusable answer: {exc.detail}"
    result: dict[str, float | str] = {"model": reasoner.identity.name, "outcome": outcome}
    result["question_wall_ms"] = (time.perf_counter() - start) * 1000
    if stats is not None:
        result.update(
            first_token_ms=(stats.first_token_seconds or 0) * 1000,
            tokens_per_s=stats.tokens_per_second or 0.0,
            generated_tokens=stats.generated_tokens or 0,
        )
    if torch.cuda.is_available():
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--ct", type=Path, default=DEFAULT_CT)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "_output" / "reasoner.json")
    parser.add_argument("--model", default=None, help="also run a real reasoner spec (e.g. hf:Qwen2.5-VL-7B-Instruct)")
    args = parser.parse_args()

    volume, source = load_volume(args.ct)
    ours = bench_ours(volume, args.repeats)
    tiny = bench_tiny_model(volume, max(3, args.repeats // 4))
    real = bench_real_model(volume, args.model) if args.model else None

    print(f"\nreasoner benchmark on {source} {volume.shape[2]}x{volume.shape[1]}x{volume.shape[0]} (i x j x k)")
    print(f"{'stage (per question, two looks)':44} {'ms':>9}")
    for key, value in ours.items():
        print(f"  {key:42} {value:9.2f}")
    verdict = "PASS" if ours["ours_in_process"] <= GOAL_OURS_MS else "FAIL"
    print(f"  {'goal: ours <= ' + str(GOAL_OURS_MS) + ' ms':42} {verdict:>9}")
    print("tiny Qwen2.5-VL (random weights, forced answers)")
    for key, value in tiny.items():
        print(f"  {key:42} {value:9.1f}")
    if real:
        print(f"real model {args.model}")
        for key, value in real.items():
            print(f"  {key:42} {value!s:>9}")

    out = args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpus()},
        "volume": {"source": source, "shape_kji": list(volume.shape)},
        "ours_ms": ours,
        "goal_ours_ms": GOAL_OURS_MS,
        "goal_met": verdict == "PASS",
        "tiny_model": tiny,
        "real_model": real,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    raise SystemExit(main())
