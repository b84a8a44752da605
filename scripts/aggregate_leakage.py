"""What the server's view under secure aggregation leaks: Inverting Gradients against the mean of
k clients' uploads, for several k, on one finished run (GitHub issue #29).

Usage::

    python scripts/aggregate_leakage.py --run RUN_DIR [--k 1 2 5] [--victims 0 1 2 3 4] [--images 4]
                                        [--batch-size 1] [--iterations 1000] [--seed 0] [--out DIR]

It trains nothing: it attacks the run ``rvepfl train`` wrote, with ``rvepfl attack ig
--threat-model aggregate --clients-in-sum K`` for every k and every victim (the job that command
would run, with the same files), under the run's last round with saved states:

- victim ``v``'s sum holds its upload and those of the next k - 1 clients of the round
  (:meth:`rvepfl.attacks.threat.Target.sum_clients`); each client's upload is its whole local
  round (the run's ``train.local_epochs`` steps) on ``--batch-size`` of its images;
- victim ``v`` is attacked with seed ``--seed + v``: the images a client puts into one victim's
  sums are then drawn apart from those it puts into another's (with one seed, every victim's sums
  of all the clients would hold the same images);
- ``--images`` observations' worth of the victim's images (``--images / --batch-size`` sums), and
  every image of every sum is reconstructed and scored (k x images rows per victim).

The table has one row per k: the images scored, the mean PSNR and SSIM with their 95 % intervals,
and the attack accuracy (the share of reconstructions the evaluator labels as their true class).
The intervals are :func:`rvepfl.experiments.stats.cell_interval`'s for one seed, a percentile
bootstrap whose units are the observed sums (each sum's mean score; the images of one sum are
reconstructed together, so they are not independent), and for the accuracy a bootstrap of the
images, hulled with the exact Clopper-Pearson interval of their count. The run's own seed is one
training run: the intervals say nothing of how another would move the numbers.

Writes ``OUT/k<k>/client<v>/`` (each job's ``scores.csv``, ``summary.json``, ``grid.png``; a
complete job is skipped when run again, a stopped one resumes), the evaluator in ``OUT/``, then
``OUT/table.md`` (atomically) and prints it. ``OUT`` defaults to
``runs/aggregate-leakage/<run directory's name>``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rvepfl.attacks.base import AttackRequest
from rvepfl.attacks.registry import attack
from rvepfl.attacks.runner import run_attack
from rvepfl.attacks.threat import Target
from rvepfl.errors import RvepflError
from rvepfl.experiments.stats import Interval, MeanSample, SeedDraw, cell_interval
from rvepfl.io import atomic_write_bytes
from rvepfl.perf import attack_threads

ATTACK = "ig"


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run directory written by `rvepfl train`")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 5], help="clients in the sum (default 1 2 5)")
    parser.add_argument("--victims", type=int, nargs="+", default=None,
                        help="the attacked clients (default: the first five of the run, or all of them if fewer)")
    parser.add_argument("--images", type=int, default=4, help="images of each victim to attack (default 4)")
    parser.add_argument("--batch-size", type=int, default=1, help="images each client trains on (default 1)")
    parser.add_argument("--iterations", type=int, default=None, help="Adam steps (default: ig's, 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the attack's seed; victim v uses seed + v (default 0)")
    parser.add_argument("--evaluator-images", type=int, default=5000,
                        help="images the evaluator trains on (default 5000)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default runs/aggregate-leakage/<run's name>)")
    parser.add_argument("--quiet", action="store_true", help="only the table")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also write the table into this README's <!-- results:aggregate-<method> --> block")
    return parser.parse_args(argv)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _cell(interval: Interval, digits: int, scale: float = 1.0) -> str:
    iv = interval.scaled(scale) if scale != 1.0 else interval
    return f"{iv.mean:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def summarise(k: int, rows: list[dict[str, str]], key: str) -> dict[str, Any]:
    """One table row from every ``scores.csv`` row of the jobs with ``k`` clients in the sum."""
    draw = SeedDraw(1)
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    for row in rows:
        per = sums.setdefault((row["victim"], row["draw"]), {"psnr": [], "ssim": []})
        per["psnr"].append(float(row["psnr"]))
        per["ssim"].append(float(row["ssim"]))
    out: dict[str, Any] = {"k": k, "images": len(rows), "sums": len(sums)}
    for score in ("psnr", "ssim"):
        means = np.array([np.mean(v[score]) for v in sums.values()])
        means = means[np.isfinite(means)]
        out[score] = (cell_interval([MeanSample(means)], draw, f"{key}/k{k}/{score}")
                      if len(means) >= 2 else None)
    labelled = [float(row["evaluator_correct"]) for row in rows if row["evaluator_correct"] != ""]
    out["accuracy"] = (cell_interval([MeanSample(np.array(labelled))], draw, f"{key}/k{k}/accuracy")
                       if len(labelled) >= 2 else None)
    return out


def table(method: str, run: Path, summaries: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`summarise`'s rows."""
    lines = [f"Inverting Gradients against the mean of k clients' updates ({method}, `{run}`):", "",
             "| k | images | sums | PSNR (dB), mean [95 % interval] | SSIM | attack accuracy (%) |",
             "| ---: | ---: | ---: | --- | --- | --- |"]
    for s in summaries:
        psnr = _cell(s["psnr"], 2) if s["psnr"] is not None else "n/a"
        ssim = _cell(s["ssim"], 3) if s["ssim"] is not None else "n/a"
        acc = _cell(s["accuracy"], 0, 100.0) if s["accuracy"] is not None else "n/a"
        lines.append(f"| {s['k']} | {s['images']} | {s['sums']} | {psnr} | {ssim} | {acc} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        for name, value, low in (("--images", args.images, 1), ("--batch-size", args.batch_size, 1),
                                 ("--threads", args.threads, 0)):
            if value < low:
                raise RvepflError(f"Expected {name} >= {low}, got {value}")
        target = Target(args.run)
        chosen = attack(ATTACK)
        victims = args.victims if args.victims is not None else list(range(min(5, target.cfg.data.num_clients)))
        out = args.out or Path("runs") / "aggregate-leakage" / target.run.path.name
        ks = list(dict.fromkeys(args.k))
        jobs = []
        for k in ks:  # every job checked before any runs: a bad k or victim is one line, nothing written
            for v in dict.fromkeys(victims):
                request = AttackRequest(threat="aggregate", client=v, clients_in_sum=k, batch_size=args.batch_size,
                                        images=args.images, iterations=args.iterations, seed=args.seed + v,
                                        evaluator_images=args.evaluator_images)
                settings = chosen.resolve(target, request)
                chosen.open(target, settings)
                jobs.append((k, v, settings))
    except RvepflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = 0.0  # the jobs' own, summed: a rerun that finds them complete reports the same
    rows: dict[int, list[dict[str, str]]] = {k: [] for k in ks}
    with attack_threads(args.threads):
        for k, v, settings in jobs:
            dest = out / f"k{k}" / f"client{v}"
            head = f"k={k}, victim {v}"
            run_attack(target, settings, dest, lambda line, h=head: log(f"{h}: {line}"),  # type: ignore[misc]  # a lambda with a default
                       evaluator_cache=out)
            rows[k].extend({**row, "victim": str(v)} for row in _rows(dest / "scores.csv"))
            seconds += float(json.loads((dest / "summary.json").read_text(encoding="utf-8"))["seconds"])
    key = f"aggregate-leakage/{target.method.name}/seed{target.cfg.seed}"  # the bootstrap's stream: not the path
    text = table(target.method.name, target.run.path, [summarise(k, rows[k], key) for k in ks])
    text += (f"\n{len(victims)} victims ({', '.join(map(str, victims))}), {args.images} images each, batch "
             f"{args.batch_size}, round {jobs[0][2].round}, {jobs[0][2].local_steps} local steps, "
             f"{jobs[0][2].iterations} iterations, seed {args.seed} + victim; {seconds:.0f} s of attacks "
             f"({args.threads} thread{'s' if args.threads != 1 else ''}).\n")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "table.md", text.encode())
    if args.readme is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme_results import write_block

        write_block(args.readme, f"aggregate-{target.method.name}", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
