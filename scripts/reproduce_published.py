"""The published figures, made to appear and vanish: the README's "Reproducing the published
figures" section.

Usage::

    python scripts/reproduce_published.py [--out runs/reproduce] [--seed 0] [--batch-size 64]
                                          [--set KEY=VALUE ...] [--readme README.md] [--table-only]

Four runs of ``rvepfl train`` with ``configs/quick.toml`` (RVE-PFL, the bundled MNIST digits, 10
clients, 7 rounds, 2 local epochs), the same seed and clients, that differ only in the two
published defects this project makes available on request:

- ``honest``: each client's test split fixed for the whole run, a fresh Adam per client and
  round (``rvepfl train``'s defaults: the README's main result);
- ``leaky split``: ``data.test_split = "published-leaky"``, each client's images re-split every
  round as the published code did, so a round tests on images trained on in earlier rounds;
- ``shared Adam``: ``train.optimiser = "published-shared"``, one Adam whose moments and step
  counts pass from client to client and round to round;
- ``published``: both, the published protocol.

Writes ``OUT/<variant>/`` (run directories; a complete run is not run again, an interrupted one
is resumed), then, atomically, ``OUT/reproduction.csv`` (every variant and round: mean client
test, general and train accuracy), ``OUT/reproduction.md`` (the test accuracy per round side by
side, with each run's seconds) and ``OUT/reproduction.png``. ``--table-only`` rewrites them from
the runs that exist; ``--readme README.md`` also puts reproduction.md between the README's
``<!-- results:reproduce -->`` and ``<!-- /results:reproduce -->``. ``--set`` passes settings to
every run (e.g. a smaller size to try the script); ``--batch-size 256`` is the published batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from readme_results import write_block  # scripts/ is on sys.path when a script runs

from rvepfl.io import atomic_write_bytes, atomic_write_text, read_csv_rows, write_csv

REPO = Path(__file__).resolve().parents[1]
LEAKY = {"data.test_split": "published-leaky"}
SHARED = {"train.optimiser": "published-shared"}
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "honest": ("honest: fixed test split, fresh Adam", {}),
    "leaky-split": ("leaky split (published)", LEAKY),
    "shared-adam": ("shared Adam (published)", SHARED),
    "published": ("both: the published protocol", {**LEAKY, **SHARED}),
}


def _summary(run: Path) -> dict | None:
    try:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if summary.get("status") == "complete" else None


def run_variant(name: str, out: Path, seed: int, batch_size: int, sets: list[str]) -> None:
    """Train variant ``name`` into ``out/<name>`` (resumed if it was interrupted)."""
    run = out / name
    if _summary(run) is not None:
        print(f"{name}: complete, skipped ({run})", flush=True)
        return
    command = [sys.executable, "-m", "rvepfl", "train", "--quiet"]
    if (run / "state" / "progress.json").exists():
        command += ["--resume", str(run)]
    else:
        # One thread per process whatever the variant (the shared Adam's runs have one process,
        # the others two workers): robust on a shared machine, and the same arithmetic throughout.
        settings = {**VARIANTS[name][1], "train.batch_size": str(batch_size), "threads": "1"}
        command += ["--config", str(REPO / "configs/quick.toml"), "--seed", str(seed), "--out", str(run)]
        for key, value in settings.items():
            command += ["--set", f"{key}={value}"]
        for item in sets:
            command += ["--set", item]
    print(f"{name}: training -> {run}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: {name} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)


def _curve(run: Path, csv_name: str) -> list[float]:
    header, rows = read_csv_rows(run / "metrics" / csv_name)
    col = header.index("ACC")
    return [float(r[col]) for r in rows]


def write_tables(out: Path) -> str:
    """reproduction.csv, .md and .png from the complete runs in ``out``; the markdown."""
    done = {name: s for name in VARIANTS if (s := _summary(out / name)) is not None}
    if not done:
        raise SystemExit(f"error: no complete run in {out}: run the script without --table-only first")
    curves = {name: _curve(out / name, "epoch_testing.csv") for name in done}
    rows = []
    for name in done:
        general = _curve(out / name, "general_test_epochs.csv")
        train = _curve(out / name, "epoch_training.csv")
        for r, acc in enumerate(curves[name]):
            rows.append([name, r + 1, acc, general[r], train[r]])
    write_csv(out / "reproduction.csv", ["variant", "round", "test_acc", "general_acc", "train_acc"], rows)

    rounds = max(len(c) for c in curves.values())
    lines = ["| round | " + " | ".join(VARIANTS[n][0] for n in done) + " |",
             "| ---: | " + " | ".join("---:" for _ in done) + " |"]
    for r in range(rounds):
        cells = [f"{100 * curves[n][r]:.1f}" if r < len(curves[n]) else "" for n in done]
        lines.append(f"| {r + 1} | " + " | ".join(cells) + " |")
    lines.append("| seconds | " + " | ".join(f"{done[n]['seconds']['total']:.0f}" for n in done) + " |")
    any_summary = next(iter(done.values()))
    text = ("\n".join(lines) + "\n\nMean client test accuracy (%) per round, RVE-PFL, seed "
            f"{any_summary['seed']}, made by `python scripts/reproduce_published.py` "
            f"({len(done)} runs, {sum(s['seconds']['total'] for s in done.values()) / 60:.0f} min of training). "
            "With the leaky split a round's \"test\" images were trained on in earlier rounds: "
            "those columns are not test accuracies.\n")
    atomic_write_text(out / "reproduction.md", text)
    _plot(out / "reproduction.png", curves)
    return text


def _plot(path: Path, curves: dict[str, list[float]]) -> None:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), [100 * a for a in curve], marker="o", label=VARIANTS[name][0])
    ax.set_xlabel("round")
    ax.set_ylabel("mean client accuracy on its 'test' split (%)")
    ax.set_title("RVE-PFL: the published protocol against an honest one")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="local batch (quick: 64; published: 256)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every run (repeatable)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--table-only", action="store_true", help="rewrite the tables from the runs that exist")
    parser.add_argument("--readme", type=Path, help="write the table into this README's results:reproduce block")
    args = parser.parse_args()
    if not args.table_only:
        for name in args.variants:
            run_variant(name, args.out, args.seed, args.batch_size, args.sets)
    text = write_tables(args.out)
    print(text)
    if args.readme is not None:
        write_block(args.readme, "reproduce", text)


if __name__ == "__main__":
    main()
