"""Run every benchmark, print one table of figures with ratios, write ``benchmarks/results.json`` and ``results.md``.

Run from the project root::

    .venv/bin/python benchmarks/run.py [--quick] [--only segmenter,propagation] [--out benchmarks/results.json]

Each benchmark script (``segmenter``, ``propagation``, ``reasoner``, ``dialogue``, ``export``, ``server``,
``volumes``) runs in its own child process with ``--json PATH``: one benchmark's models, threads and peak RSS never colour another's,
and each script keeps working on its own. This script then turns each JSON into rows of *figures*: a value
with its unit, the baseline measured in the same run it is compared with (the machine's compute bound, encoding
every slice, an uncached prompt, the same round in-process, ...), their ratio, and the issue's goal with
pass/fail where the issue states one. Absolute times alone say little on a shared machine; the ratios travel.

``--quick`` runs fewer repetitions (and a 60-slice series for ``export``, one organ for ``propagation``, two small
crops with 2 corrections for ``volumes``): for checking that everything runs, not for figures to quote. ``results.json`` holds the machine description (CPU
model, cores, RAM, OS, Python and library versions, git commit, date), each benchmark's status and full JSON,
and the figures; it is written atomically, and ``results.md`` (the table) beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DEFAULT_OUT = BENCH / "results.json"


@dataclass(frozen=True)
class Goal:
    """The issue's goal for one figure: ``on`` the value or the ratio, ``op`` one of <=, >=, ==."""

    on: str
    op: str
    target: float

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        x = value if self.on == "value" else ratio
        if x is None:
            return None
        return {"<=": x <= self.target, ">=": x >= self.target, "==": x == self.target}[self.op]

    def text(self, unit: str) -> str:
        return f"{self.op} {self.target:g} {'x' if self.on == 'ratio' else unit}".strip()


@dataclass
class Figure:
    benchmark: str
    name: str
    value: float
    unit: str
    baseline: str | None = None  # what the value is compared with, measured in the same run
    baseline_value: float | None = None
    ratio: float | None = None  # value / baseline_value unless the script measured a better one (per round)
    goal: str | None = None
    passed: bool | None = None


def figure(
    bench: str,
    name: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    ratio: float | None = None,
    goal: Goal | None = None,
) -> Figure:
    if ratio is None and baseline_value:
        ratio = value / baseline_value
    return Figure(
        bench,
        name,
        float(value),
        unit,
        baseline,
        None if baseline_value is None else float(baseline_value),
        None if ratio is None else float(ratio),
        goal.text(unit) if goal else None,
        goal.met(value, ratio) if goal else None,
    )


# -- each benchmark's JSON -> figures --------------------------------------------------------------------------
def segmenter_figures(d: dict) -> list[Figure]:
    b = "segmenter"
    goals = d["goals"]
    # The ratio is the median over rounds of (encoder / bound measured in the same round); the value shown
    # as the baseline is the bound of the fastest round.
    bound = f"fp32 bound, {d['encoder_gflops']:.0f} GFLOP (ratio per round)"
    rows = []
    for name, row in d["backends"].items():
        # The goal is for the CPU default (openvino, fp32) and the int8 option; torch and onnx are for comparison.
        default_or_option = name in ("openvino", "onnx-int8")
        rows.append(
            figure(
                b,
                f"encoder ({name})",
                row["encoder_s_median"],
                "s/slice",
                bound,
                d["bound_s_per_slice_best"],
                ratio=row["encoder_over_bound_median"],  # per round, bound and encoder under the same load
                goal=Goal("ratio", "<=", goals["encoder_over_bound"]) if default_or_option else None,
            )
        )
    onnx, int8 = d["backends"]["onnx"], d["backends"].get("onnx-int8")
    openvino = d["backends"].get("openvino")
    if openvino:
        rows.append(
            figure(
                b,
                "encoder openvino vs onnx (both fp32)",
                openvino["encoder_s_median"],
                "s/slice",
                "fp32 onnx encoder",
                onnx["encoder_s_median"],
                ratio=openvino["encoder_over_onnx_fp32_median"],
            )
        )
        rows.append(figure(b, "masks openvino vs onnx (liver)", d["masks_dice_openvino_vs_onnx"], "Dice"))
    for name, row in d["backends"].items():
        sl = row.get("slices")
        if not sl:
            continue
        label = f"{name}: every {d['slice_step']}th organ slice"
        rows.append(
            figure(b, f"{label}, Dice vs reference (mean of {sl['slices']})", sl["dice_vs_reference_mean"], "Dice")
        )
        rows.append(
            figure(
                b,
                f"{label}, masks vs fp32 (min of {sl['well_segmented_slices']} well segmented)",
                sl["masks_dice_vs_fp32_min_well_segmented"],
                "Dice",
            )
        )
    if int8:
        rows.append(
            figure(
                b,
                "encoder int8 vs fp32",
                int8["encoder_s_median"],
                "s/slice",
                "fp32 onnx encoder",
                onnx["encoder_s_median"],
                ratio=int8["encoder_over_onnx_fp32_median"],
            )
        )
        rows.append(
            figure(
                b,
                "int8 masks vs fp32 (min of 5 organs)",
                int8["masks_dice_vs_fp32_min"],
                "Dice",
                goal=Goal("value", ">=", d["int8_gate"]["masks_dice_vs_fp32_min"]),
            )
        )
        rows.append(
            figure(
                b,
                "int8 organ Dice shift vs fp32 (max)",
                int8["organ_dice_max_shift_vs_fp32"],
                "Dice",
                goal=Goal("value", "<=", d["int8_gate"]["dice_vs_reference_within"]),
            )
        )
    for name, row in d["backends"].items():
        uncached = row["encoder_s_median"] + row["cached_prompt_to_mask_s_median"]
        rows.append(
            figure(
                b,
                f"cached prompt -> mask ({name})",
                row["cached_prompt_to_mask_s_median"],
                "s",
                "uncached prompt (encoder + decoder)",
                uncached,
                goal=Goal("value", "<=", goals["cached_prompt_s"]),
            )
        )
    rows.append(figure(b, "masks torch vs onnx (liver)", d["masks_dice_torch_vs_onnx"], "Dice"))
    rows.append(
        figure(
            b,
            "peak RSS, default segmenter",
            d["peak_rss_gb_default_segmenter"],
            "GB",
            goal=Goal("value", "<=", goals["peak_rss_gb"]),
        )
    )
    return rows


def propagation_figures(d: dict) -> list[Figure]:
    b = "propagation"
    enc = d["encoder_s_per_slice"]
    rows = []
    for r in d["organs"]:
        o = r["organ"]
        rows.append(
            figure(
                b,
                f"{o}: encoder calls per visited slice",
                r["encoder_calls"],
                "calls",
                f"visited slices ({r['visited']} of {r['slices_in_volume']})",
                r["visited"],
                goal=Goal("ratio", "==", 1.0),
            )
        )
        rows.append(
            figure(
                b,
                f"{o}: propagation",
                r["seconds"],
                "s",
                "encoding every slice of the volume",
                enc * r["slices_in_volume"],
                ratio=r["ratio_to_encoding_every_slice"],
            )
        )
        rows.append(
            figure(
                b,
                f"{o}: per visited slice",
                r["seconds_per_visited_slice"],
                "s/slice",
                "uncached encoder per slice",
                enc,
                ratio=r["ratio_to_encoder"],
            )
        )
        rows.append(
            figure(
                b,
                f"{o}: cached prompt -> mask",
                r["cached_prompt_to_mask_s"],
                "s",
                "uncached encoder per slice",
                enc,
                goal=Goal("value", "<=", 0.1),
            )
        )
        rows.append(figure(b, f"{o}: 3D Dice vs reference", r["dice_3d"], "Dice"))
    rows.append(
        figure(b, "peak RSS (propagation process)", d["peak_rss_mb"] / 1000, "GB", goal=Goal("value", "<=", 1.5))
    )
    return rows


def reasoner_figures(d: dict) -> list[Figure]:
    b = "reasoner"
    ours, tiny = d["ours_ms"], d["tiny_model"]
    wall = "tiny Qwen2.5-VL question, wall (same run)"
    return [
        figure(
            b,
            "our work per question (in-process)",
            ours["ours_in_process"],
            "ms",
            wall,
            tiny["question_wall_ms"],
            goal=Goal("value", "<=", d["goal_ours_ms"]),
        ),
        figure(b, "our work per question (HTTP adapter)", ours["ours_http"], "ms", wall, tiny["question_wall_ms"]),
        figure(
            b,
            "transformers processor (montage)",
            tiny["processor_montage_ms"],
            "ms",
            "our work (in-process)",
            ours["ours_in_process"],
        ),
        figure(b, "tiny model generation", tiny["tokens_per_s"], "tokens/s"),
    ]


def dialogue_figures(d: dict) -> list[Figure]:
    b = "dialogue"
    s = d["summary"]
    raw = "plain write of the same bytes"
    return [
        figure(
            b,
            "save after round 10 (10 entities)",
            s["save_ms_round_10"],
            "ms",
            raw,
            s["raw_write_same_bytes_ms"],
            goal=Goal("value", "<=", s["save_goal_ms"]),
        ),
        figure(
            b,
            "save after a round, max of 10",
            s["save_ms_max"],
            "ms",
            raw,
            s["raw_write_same_bytes_ms"],
            goal=Goal("value", "<=", s["save_goal_ms"]),
        ),
        figure(b, "load the saved session", s["load_ms"], "ms", raw, s["raw_write_same_bytes_ms"]),
        figure(
            b,
            "session memory, 10 entities",
            s["session_memory_bytes"] / 1024,
            "kB",
            "the masks' own bytes",
            s["mask_bytes_total"] / 1024,
        ),
    ]


def export_figures(d: dict) -> list[Figure]:
    b = "export"
    seg, web = d["seg"], d["dicomweb"]
    slices = d["series"]["shape_kji"][0]
    disk = f"reading the {slices}-slice series from disk"
    rows = [
        figure(
            b,
            f"DICOM-SEG, 10 segments, label map ({slices} slices)",
            seg["auto"]["median_s"],
            "s",
            disk,
            web["disk_median_s"],
            goal=Goal("value", "<=", d["goals"]["seg_10_segments_s"]),
        ),
        figure(
            b,
            f"DICOM-SEG, 10 segments, binary ({slices} slices)",
            seg["binary"]["median_s"],
            "s",
            disk,
            web["disk_median_s"],
        ),
        figure(
            b,
            "DICOM-SEG, 10 overlapping segments",
            seg["binary_overlapping"]["median_s"],
            "s",
            disk,
            web["disk_median_s"],
        ),
        figure(
            b,
            "series over DICOMweb (WADO-RS)",
            web["dicomweb_median_s"],
            "s",
            disk,
            web["disk_median_s"],
            ratio=web["dicomweb_over_disk"],
        ),
        figure(
            b, "DICOMweb voxels equal disk voxels", float(web["same_voxels"]), "bool", goal=Goal("value", "==", 1.0)
        ),
    ]
    return rows


def server_figures(d: dict) -> list[Figure]:
    b = "server"
    o, u, m, c = (
        d["overhead_per_round"],
        d["upload_512x512x300_int16_s"],
        d["mask_return_200_slices"],
        d["concurrent_clients"],
    )
    shares = list(c["share_while_all_busy"].values())
    fair = 1 / c["clients"]
    return [
        figure(
            b,
            "HTTP overhead per round",
            o["overhead_ms_median"],
            "ms",
            "same round in-process (excl. model)",
            o["in_process_s_median_excl_model"] * 1000,
            goal=Goal("value", "<=", o["goal_ms"]),
        ),
        figure(
            b,
            "upload 512x512x300 int16, raw",
            u["raw"],
            "s",
            "the same upload, deflate level 1",
            u["deflate-1"],
            goal=Goal("value", "<=", u["goal_s"]),
        ),
        figure(b, "re-send of the same volume", u["resend_same_volume_s"], "s", "raw upload", u["raw"]),
        figure(
            b,
            "mask return, 200-slice entity",
            m["get_and_decode_s_median"],
            "s",
            "decoding it to the dense grid",
            m["to_dense_s_median"],
            goal=Goal("value", "<=", m["goal_s"]),
        ),
        figure(
            b, f"{c['clients']} concurrent clients: errors", len(c["errors"]), "errors", goal=Goal("value", "==", 0)
        ),
        figure(
            b,
            f"{c['clients']} concurrent clients: p99 latency",
            c["latency_p99_s"],
            "s",
            "p50 latency",
            c["latency_p50_s"],
        ),
        figure(b, f"{c['clients']} concurrent clients: smallest share", min(shares), "share", "fair share", fair),
    ]


def volumes_figures(d: dict) -> list[Figure]:
    """The simulated user's 3D figures per propagation variant and group, and the speed check's encoder counts."""
    b = "volumes"
    rows = []
    for variant, entry in d["summary"].items():
        for group in ("ct-goal", "brain", "ct-tracked"):
            g = entry.get(group)
            if not g:
                continue
            name = f"{variant} {group} (n={g['n']})"
            rows.append(
                figure(b, f"{name}: final 3D Dice", g["final_dice"], "Dice", "after the first box", g["initial_dice"])
            )
            rows.append(figure(b, f"{name}: DSC_AUC", g["dsc_auc"], "AUC"))
            rows.append(figure(b, f"{name}: NSD_AUC", g["nsd_auc"], "AUC"))
            rows.append(figure(b, f"{name}: encoder calls per structure", g["encoder_calls"], "calls"))
        lowered = entry["lowered_by_a_correction"]
        rows.append(
            figure(
                b,
                f"{variant}: structures a correction made worse",
                len(lowered),
                "structures",
                goal=Goal("value", "==", 0),
            )
        )
        gaps = [g for g in entry["low_resolution_key_gap"].values() if g is not None]
        if gaps:
            rows.append(
                figure(
                    b,
                    f"{variant}: key-slice Dice lost at low resolution (max)",
                    max(gaps),
                    "Dice",
                    goal=Goal("value", "<=", 0.05),
                )
            )
    speed = d.get("speed")
    if speed:
        full, skip, structure = speed["full"], speed["skip"], speed["structure"]
        rows += [
            figure(
                b,
                f"{structure}: encoder calls, skip-and-interpolate",
                skip["encoder_calls"],
                "calls",
                "full propagation",
                full["encoder_calls"],
            ),
            figure(b, f"{structure}: skip (default) mask vs full mask", speed["skip_vs_full_dice"], "Dice"),
            figure(
                b,
                f"{structure}: propagation",
                full["seconds"],
                "s",
                "one uncached encoder call",
                speed["encoder_s"]["seconds"],
            ),
            figure(
                b,
                f"{structure}: second run from the disk store, encoder calls",
                full["second_run_encoder_calls"],
                "calls",
                goal=Goal("value", "==", 0),
            ),
        ]
    return rows


def cold_start_figures(d: dict) -> list[Figure]:
    """``cold_start.py``'s own figures (launch -> first encoder call, answer -> first mask), each already against one
    encoder call of the same run, with the issue's goals it states."""
    rows = []
    for f in d["figures"]:
        goal = Goal(*f["goal"]) if f.get("goal") else None
        rows.append(
            figure("cold_start", f["name"], f["value"], f["unit"], f["baseline"], f["baseline_value"], f["ratio"], goal)
        )
    return rows


@dataclass(frozen=True)
class Benchmark:
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    figures: Callable[[dict], list[Figure]]


BENCHMARKS: dict[str, Benchmark] = {
    "segmenter": Benchmark(
        "segmenter.py", ("--repeats", "7"), ("--repeats", "2", "--slice-step", "12"), segmenter_figures
    ),
    "propagation": Benchmark("propagation.py", (), ("--organs", "spleen"), propagation_figures),
    "reasoner": Benchmark("reasoner.py", ("--repeats", "20"), ("--repeats", "4"), reasoner_figures),
    "dialogue": Benchmark("dialogue.py", (), (), dialogue_figures),
    "export": Benchmark("export.py", ("--repeats", "3"), ("--repeats", "1", "--slices", "60"), export_figures),
    "server": Benchmark("server.py", (), ("--quick",), server_figures),
    "volumes": Benchmark("volumes.py", (), ("--quick",), volumes_figures),
    "cold_start": Benchmark("cold_start.py", (), ("--quick", "--no-baseline"), cold_start_figures),
}


# -- the machine ---------------------------------------------------------------------------------------------
def machine() -> dict:
    """CPU model, cores, RAM, OS, Python, library versions, git commit and date: what the figures were run on."""
    cpu, physical = platform.processor() or platform.machine(), None
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
        ids, package = set(), ""
        for line in info.splitlines():  # (physical id, core id) pairs: hyper-thread siblings share one core
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                package = value.strip()
            elif key.strip() == "core id":
                ids.add((package, value.strip()))
        physical = len(ids) or None
    except OSError:
        flags = []
    try:
        import psutil

        physical, ram = psutil.cpu_count(logical=False) or physical, psutil.virtual_memory().total
    except ImportError:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    versions = {}
    for package in ("torch", "onnxruntime", "openvino", "numpy", "transformers", "highdicom", "fastapi"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cpu_simd": [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags],
        "cores_logical": os.cpu_count(),
        "cores_physical": physical,
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": None if ram is None else round(ram / 1e9, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **git_state(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def git_state() -> dict:
    """The commit, and whether the working tree differed from it (read-only git calls)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


# -- running -------------------------------------------------------------------------------------------------
def run_one(name: str, bench: Benchmark, quick: bool, work: Path, timeout: float) -> dict:
    """Run one script in a child process; its JSON and figures, or why it failed (the others still run)."""
    out = work / f"{name}.json"
    command = [sys.executable, str(BENCH / bench.script), *(bench.quick if quick else bench.full), "--json", str(out)]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": time.perf_counter() - start, "command": command[1:]}
    record: dict = {
        "command": command[1:],
        "seconds": round(time.perf_counter() - start, 1),
        "returncode": proc.returncode,
    }
    if not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        print(f"   failed (exit {proc.returncode}): {tail[-1] if tail else 'no output'}", flush=True)
        return {**record, "status": "failed", "output_tail": tail}
    data = json.loads(out.read_text())
    try:
        figures = [asdict(f) for f in bench.figures(data)]
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return {**record, "status": "failed", "output_tail": [f"figures: {type(exc).__name__}: {exc}"], "data": data}
    # A script may exit non-zero for a missed goal (dialogue does) after writing its figures: that is a result.
    print(f"   done in {record['seconds']} s", flush=True)
    return {**record, "status": "ok", "figures": figures, "data": data}


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# -- the table -----------------------------------------------------------------------------------------------
COLUMNS = ("benchmark", "figure", "value", "unit", "baseline (same run)", "ratio", "goal", "pass")


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def table_rows(results: dict) -> list[tuple[str, ...]]:
    rows = []
    for name, record in results["benchmarks"].items():
        if record["status"] != "ok":
            rows.append((name, f"did not run: {record['status']}", "", "", "", "", "", "FAIL"))
            continue
        for f in record["figures"]:
            baseline = f"{f['baseline']}: {_num(f['baseline_value'])} {f['unit']}" if f["baseline"] else ""
            verdict = "" if f["passed"] is None else ("pass" if f["passed"] else "FAIL")
            ratio = f"{f['ratio']:.3g}x" if f["ratio"] is not None else ""
            rows.append((name, f["name"], _num(f["value"]), f["unit"], baseline, ratio, f["goal"] or "", verdict))
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [min(max(len(r[i]) for r in [COLUMNS, *rows]), 60) for i in range(len(COLUMNS))]
    for row in [COLUMNS, *rows]:
        print("  ".join(cell[: widths[i]].ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def markdown(results: dict, rows: list[tuple[str, ...]]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"{m['date_utc']}, commit `{(m['git_commit'] or 'unknown')[:12]}`{' (uncommitted changes)' if m['git_dirty'] else ''}"
        f"{', quick run (not for quoting)' if results['quick'] else ''}.",
        f"{m['cpu']}; {m['cores_usable']} usable cores ({m['cores_physical']} physical); {m['ram_gb']} GB RAM; "
        f"{m['os']}; Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        "",
        "Ratios compare each value with a baseline measured in the same run (`benchmarks/run.py`).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions: checks that all runs, not figures")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (results.md is written beside it)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per benchmark")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        print(
            f"unknown benchmark(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2

    results: dict = {"format": 1, "machine": machine(), "quick": args.quick, "benchmarks": {}}
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as work:
        for name in names:
            results["benchmarks"][name] = run_one(name, BENCHMARKS[name], args.quick, Path(work), args.timeout)
    results["figures"] = [f for r in results["benchmarks"].values() for f in r.get("figures", [])]
    rows = table_rows(results)
    print()
    print_table(rows)
    write_atomically(args.out, json.dumps(results, indent=1) + "\n")
    write_atomically(args.out.with_suffix(".md"), markdown(results, rows))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")
    return 0 if all(r["status"] == "ok" for r in results["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
