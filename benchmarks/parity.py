"""bf16-mixed against float32: final accuracy per method, seed by seed (issue #16's parity table).

``python -m benchmarks.parity --out parity`` trains every (method, seed, precision) of the quick
config (configs/quick.toml: 10 clients, 7 rounds, 2 local epochs) with ``rvepfl train``, each in
its own process with the engine's defaults, into ``parity/<method>-seed<k>-<precision>``, and
writes ``parity/parity.json`` and ``parity/parity.md``: each method's mean final client test
accuracy in both precisions, the paired difference seed by seed, and whether the mean difference
is within the tolerance (1 point). A stopped run continues (``rvepfl train --resume``); finished
runs are not redone. ``--set KEY=VALUE`` changes the config for every run (a smaller federation
where bfloat16 is emulated and slow: the table then says what was changed).

A method's ``bf16_parity`` class attribute (:mod:`rvepfl.methods.base`), which lets
``train.precision = "auto"`` choose bf16-mixed for it, is set from this table measured on the
quick config itself, on hardware with native bfloat16.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rvepfl.io import atomic_write_text, write_json
from rvepfl.precision import cpu_bf16_flags

__all__ = ["main", "parity_table"]

PRECISIONS = ("32", "bf16-mixed")
TOLERANCE = 0.01  # one point of accuracy


def _run(out: Path, method: str, seed: int, precision: str, config: str, sets: Sequence[str]) -> dict[str, Any]:
    """Train one run (or continue it, or read it when finished); its summary.json."""
    run = out / f"{method}-seed{seed}-{precision}"
    summary = run / "summary.json"
    if summary.is_file() and (finished := json.loads(summary.read_text()))["status"] == "complete":
        return finished
    if (run / "config.toml").is_file():
        argv = ["train", "--resume", str(run), "--quiet"]
    else:
        argv = ["train", "--config", config, "--method", method, "--seed", str(seed), "--out", str(run), "--quiet",
                "--set", f"train.precision={precision}", *(a for s in sets for a in ("--set", s))]
    done = subprocess.run([sys.executable, "-m", "rvepfl", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: rvepfl {' '.join(argv)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(summary.read_text())


def parity_table(results: dict[str, Any]) -> str:
    """The Markdown table of ``results`` (as in parity.json)."""
    lines = ["| method | float32 | bf16-mixed | bf16 minus float32, mean (per seed) | within 1 point |",
             "| --- | ---: | ---: | ---: | :---: |"]
    for method, row in results["methods"].items():
        per_seed = ", ".join(f"{100 * d:+.1f}" for d in row["differences"])
        lines.append(f"| {method} | {100 * row['mean']['32']:.2f} % | {100 * row['mean']['bf16-mixed']:.2f} % | "
                     f"{100 * row['mean_difference']:+.2f} ({per_seed}) | {'yes' if row['within'] else '**no**'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("parity"), help="directory of the runs and the table")
    p.add_argument("--config", default="configs/quick.toml", help="the config every run starts from")
    p.add_argument("--methods", nargs="+", default=["rvepfl", "fedavg", "nbafl"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config change for every run (repeatable)")
    args = p.parse_args(argv)
    if any(s.split("=", 1)[0].strip() == "train.precision" for s in args.sets):
        print("error: --set train.precision is what the table varies: leave it out", file=sys.stderr)
        return 2
    if not Path(args.config).is_file():
        print(f"error: config file not found: {args.config}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results: dict[str, Any] = {"config": args.config, "changes": args.sets, "seeds": args.seeds,
                               "cpu_bf16_flags": list(cpu_bf16_flags()), "tolerance": TOLERANCE, "methods": {}}
    total = len(args.methods) * len(args.seeds) * len(PRECISIONS)
    count = 0
    for method in args.methods:
        acc: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        ran: dict[str, list[str]] = {p: [] for p in PRECISIONS}
        for seed in args.seeds:
            for precision in PRECISIONS:
                count += 1
                print(f"[{count}/{total}] {method} seed {seed} {precision} ({time.perf_counter() - started:.0f} s)",
                      file=sys.stderr, flush=True)
                summary = _run(args.out, method, seed, precision, args.config, args.sets)
                acc[precision].append(summary["final"]["test"]["acc"])
                ran[precision].append(summary["precision"]["ran"])
        diffs = [b - a for a, b in zip(acc["32"], acc["bf16-mixed"], strict=True)]
        mean_diff = sum(diffs) / len(diffs)
        results["methods"][method] = {
            "accuracy": acc, "ran": ran, "differences": diffs, "mean_difference": mean_diff,
            "mean": {p: sum(v) / len(v) for p, v in acc.items()}, "within": abs(mean_diff) <= TOLERANCE}
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "parity.json", results)
    text = parity_table(results)
    atomic_write_text(args.out / "parity.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
