"""One malicious client of five against FedAvg and RVE-PFL, with each aggregation: the table in
the README's "Untrusted clients" section.

Usage::

    python scripts/malicious_clients.py [--out runs/malicious] [--seeds 0 1] [--parallel 2] [--readme README.md]

Every run is ``rvepfl train`` at the size of ``configs/compare-quick.toml`` (its ``[base]``: five
clients sharing 3,000 of the bundled MNIST digits, 5 rounds of 2 local epochs), one torch thread,
and ``faults.min_clients = 4`` (a round counts with one client left out). Client 3 is the attacker
(tests/helpers/adversary.py, loaded into the run's process through
tests/helpers/faulty/sitecustomize.py; nothing in ``src/`` knows it):

- ``scale`` / ``flip``: its update multiplied by 1e4 / by -1, for each method and aggregation
  (``mean``, ``median``, ``trimmed-mean`` with the default trim fraction 0.2) and each seed,
  beside the clean run of the same cell;
- ``nan`` / ``shape`` / ``encoder``: a NaN value, an entry with a wrong shape, its private
  entries added to the upload: refused by the server's validation (the first seed, the mean;
  FedAvg all three, RVE-PFL its encoder).

Accuracy is the mean test accuracy of the four honest clients (0, 1, 2, 4) in the final round,
from each run's ``metrics/client_testing.csv``; the attacker's own score is left out of every
cell, the clean runs' too. ``rejected`` counts the rows of ``metrics/client_failures.csv``.

Writes ``OUT/<method>-<aggregation>-<attack>-s<seed>/`` (run directories; a run that completed
is not run again, an interrupted one is resumed), then ``OUT/malicious.csv`` (every run) and
``OUT/malicious.md`` (mean ± sample std over the seeds, in percent, and the change against the
clean cell), atomically. ``--table-only`` rewrites the tables from the runs that exist;
``--readme README.md`` also puts malicious.md between the README's ``<!-- results:malicious -->``
and ``<!-- /results:malicious -->``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomli_w
from readme_results import write_block  # scripts/ is on sys.path when a script runs

from rvepfl.io import atomic_write_text, write_csv

REPO = Path(__file__).resolve().parents[1]
ATTACKER = 3
CLIENTS = 5
METHODS = ("fedavg", "rvepfl")
AGGREGATIONS = ("mean", "median", "trimmed-mean")
ROBUST_ATTACKS = ("clean", "scale", "flip")
REJECTED_ATTACKS = ("nan", "shape", "encoder")
_NAMES = {"fedavg": "FedAvg", "rvepfl": "RVE-PFL"}


@dataclass(frozen=True)
class Case:
    method: str
    aggregation: str
    attack: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.aggregation}-{self.attack}-s{self.seed}"


def cases(seeds: list[int]) -> list[Case]:
    out = [Case(m, a, k, s) for m in METHODS for a in AGGREGATIONS for k in ROBUST_ATTACKS for s in seeds]
    out += [Case("fedavg", "mean", k, seeds[0]) for k in REJECTED_ATTACKS]
    out += [Case("rvepfl", "mean", "encoder", seeds[0])]
    return out


def _complete(run: Path) -> bool:
    try:
        return json.loads((run / "summary.json").read_text())["status"] == "complete"
    except (OSError, ValueError, KeyError):
        return False


def base_config(out: Path) -> Path:
    """``out/base.toml``: compare-quick's ``[base]`` as a config file (written once)."""
    path = out / "base.toml"
    if not path.exists():
        base = tomllib.loads((REPO / "configs/compare-quick.toml").read_text(encoding="utf-8"))["base"]
        atomic_write_text(path, tomli_w.dumps({"name": "malicious", **base}))
    return path


def run_case(case: Case, out: Path) -> float:
    """Train ``case`` into ``out/<name>`` (resume it if it was interrupted); its wall seconds."""
    run = out / case.name
    if _complete(run):
        return 0.0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests/helpers/faulty"), str(REPO), env.get("PYTHONPATH", "")])
    if case.attack != "clean":
        env["RVEPFL_TEST_ADVERSARY"] = f"{ATTACKER}:{case.attack}"
    else:
        env.pop("RVEPFL_TEST_ADVERSARY", None)
    settings = {"data.num_clients": CLIENTS, "faults.min_clients": CLIENTS - 1, "threads": 1, "workers": 1,
                "device": "cpu", "train.aggregation": case.aggregation}
    command = [sys.executable, "-m", "rvepfl", "train", "--quiet"]
    if (run / "state" / "progress.json").exists():
        command += ["--resume", str(run)]  # with the settings it recorded
    else:
        command += ["--config", str(base_config(out)), "--method", case.method, "--seed", str(case.seed),
                    "--out", str(run)]
        for key, value in settings.items():
            command += ["--set", f"{key}={value}"]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {case.name} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return time.perf_counter() - started


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def measure(case: Case, out: Path) -> dict[str, object]:
    """The case's row of malicious.csv, from its run directory."""
    run = out / case.name
    testing = _rows(run / "metrics" / "client_testing.csv")
    last = max(int(r["Round#"]) for r in testing)
    honest = [float(r["ACC"]) for r in testing if int(r["Round#"]) == last and int(r["client#"]) != ATTACKER]
    failures = _rows(run / "metrics" / "client_failures.csv")
    return {"method": case.method, "aggregation": case.aggregation, "attack": case.attack, "seed": case.seed,
            "rounds": last, "honest_acc": float(np.mean(honest)), "honest_clients": len(honest),
            "rejected": len([f for f in failures if f["Failure"] == "rejected"]),
            "first_reason": failures[0]["Message"] if failures else ""}


def _cell(values: list[float]) -> str:
    if not values:
        return "–"  # not run (yet)
    mean = 100 * float(np.mean(values))
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {100 * float(np.std(values, ddof=1)):.1f}"


def markdown(rows: list[dict[str, object]], seeds: list[int]) -> str:
    def acc(method: str, aggregation: str, attack: str) -> list[float]:
        return [float(r["honest_acc"]) for r in rows  # type: ignore[arg-type]
                if (r["method"], r["aggregation"], r["attack"]) == (method, aggregation, attack)]

    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over seeds {', '.join(map(str, seeds))}"
    lines = [f"Honest clients' final mean test accuracy, % ({over}); Δ: change against the clean run with the "
             "same aggregation, in points.", "",
             "| method | aggregation | clean | scale ×1e4 | Δ | sign flip | Δ |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for method in METHODS:
        for aggregation in AGGREGATIONS:
            clean = acc(method, aggregation, "clean")
            cells = [_cell(clean)]
            for attack in ("scale", "flip"):
                hit = acc(method, aggregation, attack)
                change = f"{100 * (np.mean(hit) - np.mean(clean)):+.1f}" if hit and clean else "–"
                cells += [_cell(hit), change]
            lines.append(f"| {_NAMES[method]} | {aggregation} | " + " | ".join(cells) + " |")
    lines += ["", "| method | attack | aggregation | accuracy | rejected rows | reason (first row) |",
              "| --- | --- | --- | ---: | ---: | --- |"]
    for r in rows:
        if r["attack"] in REJECTED_ATTACKS:
            reason = str(r["first_reason"]).replace("|", "\\|")
            lines.append(f"| {_NAMES[str(r['method'])]} | {r['attack']} | {r['aggregation']} | "
                         f"{100 * float(r['honest_acc']):.1f} | {r['rejected']} of {r['rounds']} rounds | {reason} |")
    return "\n".join(lines) + "\n"


def write_tables(out: Path, seeds: list[int]) -> str:
    rows = [measure(c, out) for c in cases(seeds) if _complete(out / c.name)]
    header = list(rows[0]) if rows else ["method"]
    write_csv(out / "malicious.csv", header, [list(r.values()) for r in rows])
    text = markdown(rows, seeds)
    atomic_write_text(out / "malicious.md", text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/malicious"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side, one thread each")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--readme", type=Path, help="write the table into this README's results:malicious block")
    args = parser.parse_args()
    if args.parallel < 1:
        raise SystemExit("error: --parallel must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        todo = cases(args.seeds)
        started = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            for i, (case, seconds) in enumerate(zip(todo, pool.map(lambda c: run_case(c, args.out), todo)), 1):
                print(f"[{i}/{len(todo)}] {case.name}: {seconds:.0f} s "
                      f"({time.perf_counter() - started:.0f} s in all)", file=sys.stderr, flush=True)
    text = write_tables(args.out, args.seeds)
    print(text)
    if args.readme is not None:
        write_block(args.readme, "malicious", text)


if __name__ == "__main__":
    main()
