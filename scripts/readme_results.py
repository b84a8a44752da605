"""Write the README's results block from run directories (generated, never pasted).

Usage::

    python scripts/readme_results.py RUN_DIR [RUN_DIR ...] [--readme README.md]
    python scripts/readme_results.py --table BLOCK FILE [--readme README.md]

Each run directory contributes one row: method, data set, clients, rounds, local epochs, batch,
mean client test accuracy per round, and wall time, read from its config.toml, summary.json and
metrics/epoch_testing.csv. The block between ``<!-- results:quick -->`` and
``<!-- /results:quick -->`` is replaced.

With ``--table BLOCK FILE`` the first Markdown table in the block between
``<!-- results:BLOCK -->`` and ``<!-- /results:BLOCK -->`` is replaced by the first table of FILE
(``rvepfl compare``'s ``table.md``, ``rvepfl audit``'s ``audit.md``), and each line of the block
that starts as one of FILE's margin lines (``mnist: RVE-PFL margin over NbAFL: ...``) by that line;
the block's prose stays as written.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from pathlib import Path

from rvepfl.io import atomic_write_text

BEGIN, END = "<!-- results:quick -->", "<!-- /results:quick -->"


def _processes(summary: dict) -> str:
    """'2 worker processes of 1 thread' or '2 threads' (one process), from a summary."""
    workers, threads = summary.get("workers", 1), summary["threads"]
    per = f"{threads} thread{'s' if threads != 1 else ''}"
    return f"{workers} worker processes of {per}" if workers > 1 else per


def row(run: Path) -> tuple[str, dict]:
    cfg = tomllib.loads((run / "config.toml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics" / "epoch_testing.csv", newline="") as fh:
        accs = [float(r["ACC"]) for r in csv.DictReader(fh)]
    t, d = cfg["train"], cfg["data"]
    per_round = ", ".join(f"{100 * a:.1f}" for a in accs)
    text = (
        f"| {cfg['method']} | {d['dataset']} (bundled) | {d['num_clients']} | {t['rounds']} | "
        f"{t['local_epochs']} | {t['batch_size']} | **{100 * accs[-1]:.1f}** | {per_round} | "
        f"{_precision(summary)} | {summary['seconds']['total']:.0f} |"
    )
    return text, summary


def _precision(summary: dict) -> str:
    """The number format the run trained in: ``float32`` or ``bf16-mixed`` (runs from before the
    precision setting trained in float32)."""
    ran = summary.get("precision", {}).get("ran", "32")
    return "float32" if ran == "32" else ran


def _first_table(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def write_block(readme_path: Path, block: str, text: str) -> None:
    """Replace everything between README's ``<!-- results:BLOCK -->`` and ``<!-- /results:BLOCK -->``
    with ``text``, atomically; a README without that block is a one-line error."""
    readme = readme_path.read_text(encoding="utf-8")
    begin, end = f"<!-- results:{block} -->", f"<!-- /results:{block} -->"
    if begin not in readme or end not in readme:
        raise SystemExit(f"error: {readme_path} has no {begin} ... {end} block")
    head, rest = readme.split(begin, 1)
    atomic_write_text(readme_path, f"{head}{begin}\n{text}{end}{rest.split(end, 1)[1]}")


def replace_table(readme: str, block: str, source: str) -> str:
    """``readme`` with the first table of its block ``block`` replaced by the first table of
    ``source``, and the block's margin lines by ``source``'s."""
    begin, end = f"<!-- results:{block} -->", f"<!-- /results:{block} -->"
    head, rest = readme.split(begin, 1)
    body, tail = rest.split(end, 1)
    old = _first_table(body)
    body = body.replace("\n".join(old), "\n".join(_first_table(source)), 1)
    margins = {line.split(":", 1)[0]: line for line in source.splitlines() if "margin over" in line}
    out = []
    for line in body.splitlines(keepends=True):
        key = line.lstrip("- ").split(":", 1)[0]
        if "margin over" in line and key in margins:
            line = line[: len(line) - len(line.lstrip("- "))] + margins[key] + "\n"
        out.append(line)
    return head + begin + "".join(out) + end + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--table", nargs=2, metavar=("BLOCK", "FILE"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args()
    if args.table:
        block, source = args.table
        atomic_write_text(args.readme, replace_table(args.readme.read_text(), block, Path(source).read_text()))
        return 0
    if not args.runs:
        parser.error("give run directories, or --table BLOCK FILE")
    rows, summaries = zip(*(row(r) for r in args.runs))
    v = summaries[0]["versions"]
    block = "\n".join(
        [
            BEGIN,
            "| method | data | clients | rounds | local epochs | batch | final mean client test acc (%) "
            "| per round (%) | precision | seconds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Made by `rvepfl train` (and `rvepfl train --method fedavg`) with the quick configuration, "
            f"seed {summaries[0]['seed']}, on {summaries[0]['device']} with {_processes(summaries[0])} "
            f"({v['platform']}, torch {v['torch']}), then "
            f"`python scripts/readme_results.py {' '.join(str(r) for r in args.runs)}`. "
            "Accuracy is the mean over clients of each client's accuracy on its own fixed test split "
            "(100 images) after local training.",
            END,
        ]
    )
    text = args.readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"error: {args.readme} has no {BEGIN} ... {END} block", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(args.readme, head + block + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
