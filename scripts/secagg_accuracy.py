"""The accuracy cost of secure aggregation: the same runs with and without it, seed for seed.

    python scripts/secagg_accuracy.py                                  # RVE-PFL and FedAvg, seeds 0-2
    python scripts/secagg_accuracy.py --methods fedavg --seeds 0 --out runs/secagg-accuracy

Each case is ``rvepfl train --config configs/quick.toml --method M --seed S`` (the quick size:
bundled MNIST, 10 clients, 7 rounds), once as it is and once with ``--set
secure_aggregation.enabled=true``, in the in-process engine, which computes exactly what Flower's
SecAgg+ protocol reveals (the quantised weighted mean; tests/e2e/test_flower.py checks that a
loopback deployment gives the same CSV bytes). Every run has one worker of one thread; ``--jobs``
runs go side by side. A finished run is kept and a stopped one resumed, so the script can be
run again after an interruption. It prints a Markdown table: the final mean client test
accuracy of each seed without and with secure aggregation, the difference, and its mean over the
seeds with a 95 % t interval, and writes it to ``<out>/secagg_accuracy.md`` (``--readme
README.md``: also between the README's ``<!-- results:secagg-accuracy -->`` markers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rvepfl.experiments.stats import t_quantile  # noqa: E402
from rvepfl.io import atomic_write_text  # noqa: E402


def _run(method: str, seed: int, secure: bool, out: Path, config: Path) -> tuple[float, float]:
    """(final mean client test accuracy in %, seconds) of one run, trained or resumed as needed."""
    run = out / f"{method}-{'secagg' if secure else 'plain'}-s{seed}"
    summary = run / "summary.json"
    if summary.exists() and json.loads(summary.read_text())["status"] == "complete":
        data = json.loads(summary.read_text())
        return 100 * data["final"]["test"]["acc"], data["seconds"]["total"]
    where = ["--resume", str(run)] if (run / "state").exists() else [
        "--config", str(config), "--method", method, "--seed", str(seed), "--workers", "1", "--threads", "1",
        "--set", f"secure_aggregation.enabled={'true' if secure else 'false'}", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "rvepfl", "train", *where], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {method} seed {seed} (secure aggregation {secure}) failed: "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    data = json.loads(summary.read_text())
    return 100 * data["final"]["test"]["acc"], data["seconds"]["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["rvepfl", "fedavg"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quick.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "secagg-accuracy")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one core each)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also write the table into this README's <!-- results:secagg-accuracy --> block")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [(m, s, secure) for m in args.methods for s in args.seeds for secure in (False, True)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(cases, pool.map(lambda c: _run(*c, args.out, args.config), cases)))
    lines = ["| method | seed | without (%) | with secure aggregation (%) | difference (points) |",
             "|---|---:|---:|---:|---:|"]
    for method in args.methods:
        diffs = []
        for seed in args.seeds:
            plain, secure = results[(method, seed, False)][0], results[(method, seed, True)][0]
            diffs.append(secure - plain)
            lines.append(f"| {method} | {seed} | {plain:.2f} | {secure:.2f} | {secure - plain:+.2f} |")
        d = np.asarray(diffs)
        if len(d) > 1:
            half = t_quantile(len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            interval = f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]"
        else:
            interval = f"{d.mean():+.2f}"
        lines.append(f"| **{method}** | mean | | | **{interval}** |")
    seconds = sum(r[1] for r in results.values())
    table = "\n".join(lines) + "\n"
    note = (f"\n{len(cases)} runs of {args.config.name} (in-process, one single-threaded worker each), "
            f"{seconds / 60:.0f} min of training in all.\n")
    atomic_write_text(args.out / "secagg_accuracy.md", table + note)
    if args.readme is not None:
        from readme_results import write_block  # scripts/ is on sys.path when a script runs

        write_block(args.readme, "secagg-accuracy", table + note)
    print(table + note, end="")


if __name__ == "__main__":
    main()
