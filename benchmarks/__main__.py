"""``python -m benchmarks --json FILE``: every benchmark of issue #6, a table, and a JSON file.

Each headline figure is a ratio of two timings (or two memory peaks) measured side by side in
the same run, so it carries over between machines better than a time does:

=========================  ========  ==============================================================
key                        target    what it measures
=========================  ========  ==============================================================
fl_overhead_ratio          <= 1.10   one RVE-PFL round (evaluation excluded) / the same training in
                                     one plain centralised loop (:mod:`benchmarks.training`)
flop_rate_fraction         >= 0.50   achieved training FLOP rate / large-matmul FLOP rate
rss_growth_150_vs_10       <= 1.10   peak RSS with 150 clients / with 10 (:mod:`benchmarks.memory`)
miface_speedup_vs_art      >= 5      IBM ART's MIFace time / ours (:mod:`benchmarks.attacks`)
round_seconds_quick        <= 38 s   one round of the published code's quick setting (its code:
                                     about 114 s on this machine kind)
bf16_round_speedup         >= 2.5x   the quick round in float32 / in bf16-mixed, on a CPU with native
                                     bfloat16 (:mod:`benchmarks.precision`; without it the part says
                                     so and times training steps instead)
round_seconds_quick_bf16   <= 15 s   the quick round in bf16-mixed (native bfloat16)
contended_attack_slowdown  <= 2.5x   an attack's seconds beside a 2-thread competing process / alone,
                                     with `rvepfl attack`'s default threads
                                     (:mod:`benchmarks.contention`)
gmi_prior_seconds          <= 600 s  GMI's image prior trained with its defaults (:mod:`benchmarks.gmi`)
gmi_attack_seconds         <= 60 s   one GMI attack once the prior exists: 10 classes x every
                                     restart, and its control, on one thread
ig_batched_speedup                   Inverting Gradients' images per second batched / one at a time
                                     (10 digits at batch 1, 200 iterations; :mod:`benchmarks.ig_batched`)
=========================  ========  ==============================================================

``python -m benchmarks.parity`` trains the quick config in both precisions, three seeds of three
methods, for the parity table of BENCHMARKS.md (:mod:`benchmarks.parity`).

The run takes about 15-20 minutes on a 2-core machine; ``--only`` picks parts. One part runs only
when asked for: ``--only paper --device cuda`` times a paper-scale round (150 clients, 10 local
epochs, 70,000 MNIST-size images) on a GPU (:mod:`benchmarks.paper`), with ``--precision`` its
``train.precision``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import rvepfl
from rvepfl.errors import RvepflError
from rvepfl.io import write_json
from rvepfl.perf import tune_allocator
from rvepfl.precision import cpu_bf16_flags

PARTS = ("training", "allocator", "memory", "attacks", "contention", "precision", "gmi", "ig_batched")
EXTRA_PARTS = ("paper",)  # run only when named with --only

# key, target description, test, format
_ROWS: list[tuple[str, str, Callable[[float], bool] | None, str]] = [
    ("fl_overhead_ratio", "<= 1.10", lambda v: v <= 1.10, "{:.2f}"),
    ("fl_overhead_ratio_with_eval", "", None, "{:.2f}"),
    ("flop_rate_fraction", ">= 0.50", lambda v: v >= 0.50, "{:.2f}"),
    ("plain_loop_flop_rate_fraction", "", None, "{:.2f}"),
    ("round_seconds_quick", "<= 38 s", lambda v: v <= 38.0, "{:.1f} s"),
    ("allocator_speedup", "", None, "{:.2f}x"),
    ("rss_growth_50_vs_10", "", None, "{:.3f}"),
    ("rss_growth_150_vs_10", "<= 1.10", lambda v: v <= 1.10, "{:.3f}"),
    ("miface_speedup_vs_art", ">= 5", lambda v: v >= 5.0, "{:.1f}x"),
    ("dlg_iterations_per_second", "", None, "{:.1f}/s"),
    ("ig_iterations_per_second", "", None, "{:.1f}/s"),
    ("bf16_round_speedup", ">= 2.5x (native bf16)", lambda v: v >= 2.5, "{:.2f}x"),
    ("round_seconds_quick_bf16", "<= 15 s (native bf16)", lambda v: v <= 15.0, "{:.1f} s"),
    ("bf16_matmul_gflops", "", None, "{:.1f} GFLOP/s"),
    ("bf16_round_matmul_fraction", "", None, "{:.2f}"),
    ("bf16_step_speedup", "", None, "{:.3f}x"),
    ("contended_attack_slowdown", "<= 2.5x", lambda v: v <= 2.5, "{:.2f}x"),
    ("contended_attack_slowdown_torch_threads", "", None, "{:.2f}x"),
    ("contended_attack_slowdown_torch_threads_passive", "", None, "{:.2f}x"),
    ("gmi_prior_seconds", "<= 600 s", lambda v: v <= 600.0, "{:.1f} s"),
    ("gmi_prior_seconds_one_thread", "", None, "{:.1f} s"),
    ("gmi_attack_seconds", "<= 60 s", lambda v: v <= 60.0, "{:.1f} s"),
    ("ig_images_per_second_one_at_a_time", "", None, "{:.2f}/s"),
    ("ig_images_per_second_batched", "", None, "{:.2f}/s"),
    ("ig_batched_speedup", "", None, "{:.2f}x"),
    ("paper_round_seconds", "", None, "{:.1f} s"),
    ("paper_images_per_second", "", None, "{:,.0f}/s"),
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="FILE", help="write every figure and its raw timings to FILE")
    p.add_argument("--only", metavar="PART", action="append", choices=PARTS + EXTRA_PARTS,
                   help=f"run only this part (repeatable): {', '.join(PARTS + EXTRA_PARTS)} "
                        "(paper: only when named)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default; the contention part runs the command's own)")
    p.add_argument("--workers", type=int, default=0,
                   help="client worker processes of the engine's round (the config key `workers`; 0: one per CPU)")
    p.add_argument("--device", default="auto", help="the paper part's device: auto, cpu or cuda")
    p.add_argument("--precision", default="32", choices=("32", "bf16-mixed", "16-mixed", "auto"),
                   help="the paper part's train.precision")
    p.add_argument("--paper-clients", type=int, default=150, metavar="N",
                   help="the paper part trains N of its 150 clients a round (150: the full round)")
    return p


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(results: dict[str, Any]) -> str:
    """The headline figures as a Markdown table (the one in BENCHMARKS.md)."""
    lines = ["| figure | measured | target | met |", "| --- | ---: | ---: | :---: |"]
    for key, target, test, fmt in _ROWS:
        if key not in results:
            continue
        value = results[key]
        if value is None:
            lines.append(f"| `{key}` | n/a | {target} | skipped |")
            continue
        met = "" if test is None else ("yes" if test(value) else "**no**")
        lines.append(f"| `{key}` | {fmt.format(value)} | {target} | {met} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads < 0 or args.workers < 0:
        print("error: expected --threads >= 0 and --workers >= 0", file=sys.stderr)
        return 2
    if not 1 <= args.paper_clients <= 150:
        print(f"error: expected 1 <= --paper-clients <= 150, got {args.paper_clients}", file=sys.stderr)
        return 2
    parts = args.only or list(PARTS)
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": _cpu_name(), "cpu_bf16_flags": list(cpu_bf16_flags()), "cores": os.cpu_count(),
                    "threads": threads,
                    "python": platform.python_version(), "torch": torch.__version__,
                    "rvepfl": rvepfl.__version__, "platform": platform.platform()},
        "parts": parts,
    }
    started = time.perf_counter()
    if "training" in parts:
        from benchmarks.training import training_benchmark
        log("training: the quick round against a plain loop")
        results["training"] = training_benchmark(args.threads, args.workers, log=log)
        for key in ("fl_overhead_ratio", "fl_overhead_ratio_with_eval", "flop_rate_fraction",
                    "plain_loop_flop_rate_fraction", "round_seconds_quick"):
            results[key] = results["training"][key]
    if "allocator" in parts:
        from benchmarks.training import allocator_speedup
        log("allocator: one local epoch with glibc's default thresholds and with ours")
        results["allocator"] = allocator_speedup(args.threads)
        results["allocator_speedup"] = results["allocator"]["allocator_speedup"]
    if "memory" in parts:
        from benchmarks.memory import memory_benchmark
        log("memory: peak RSS with 10, 50 and 150 clients")
        results["memory"] = memory_benchmark(args.threads, log=log)
        results["rss_growth_50_vs_10"] = results["memory"]["rss_growth_50_vs_10"]
        results["rss_growth_150_vs_10"] = results["memory"]["rss_growth_150_vs_10"]
    if "attacks" in parts:
        from benchmarks.attacks import attack_benchmark
        log("attacks: DLG and Inverting Gradients rates, MI-Face against IBM ART")
        results["attacks"] = attack_benchmark(threads=threads, log=log)
        for key in ("dlg_iterations_per_second", "ig_iterations_per_second", "miface_speedup_vs_art"):
            results[key] = results["attacks"][key]
    if "precision" in parts:
        from benchmarks.precision import precision_benchmark
        log("precision: bf16-mixed against float32")
        results["precision"] = precision_benchmark(args.workers, log=log)
        for key in ("bf16_round_speedup", "round_seconds_quick_bf16", "bf16_matmul_gflops",
                    "bf16_round_matmul_fraction", "bf16_step_speedup"):
            if key in results["precision"]:
                results[key] = results["precision"][key]
        if not results["precision"]["native_bf16"]:
            results["notes"] = [*results.get("notes", []), results["precision"]["why"]]
    if "contention" in parts:
        from benchmarks.contention import contention_benchmark
        log("contention: an attack alone and beside a 2-thread competing process")
        results["contention"] = contention_benchmark(log=log)
        for key in ("contended_attack_slowdown", "contended_attack_slowdown_torch_threads",
                    "contended_attack_slowdown_torch_threads_passive"):
            results[key] = results["contention"][key]
    if "gmi" in parts:
        from benchmarks.gmi import gmi_benchmark
        log("gmi: the image prior's training and one attack")
        results["gmi"] = gmi_benchmark(threads=threads, log=log)
        for key in ("gmi_prior_seconds", "gmi_prior_seconds_one_thread", "gmi_attack_seconds"):
            results[key] = results["gmi"][key]
    if "ig_batched" in parts:
        from benchmarks.ig_batched import ig_batched_benchmark
        log("ig_batched: Inverting Gradients on 10 digits, one at a time and batched")
        results["ig_batched"] = ig_batched_benchmark(threads=threads, log=log)
        for key in ("ig_images_per_second_one_at_a_time", "ig_images_per_second_batched", "ig_batched_speedup"):
            results[key] = results["ig_batched"][key]
    if "paper" in parts:
        from benchmarks.paper import paper_benchmark
        log(f"paper: a paper-scale round of RVE-PFL ({args.paper_clients} of 150 clients) on {args.device}")
        try:
            results["paper"] = paper_benchmark(args.device, args.paper_clients, precision=args.precision, log=log)
        except RvepflError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for key in ("paper_round_seconds", "paper_images_per_second"):
            if results["paper"][key] is not None:  # the round's time only when it is the full round
                results[key] = results["paper"][key]
    results["seconds"] = time.perf_counter() - started
    m = results["machine"]
    flags = ", ".join(m["cpu_bf16_flags"]) or "no native bf16"
    print(f"rvepfl {m['rvepfl']} benchmarks, {results['date']}: {m['cpu']} ({flags}), {m['cores']} cores, "
          f"{threads} torch threads, torch {m['torch']} ({results['seconds']:.0f} s)\n")
    print(table(results))
    for note in results.get("notes", []):
        print(f"\nnote: {note}")
    if args.json:
        write_json(args.json, results)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
