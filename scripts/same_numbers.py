"""Check that a change moves no number: train the same configs with an earlier commit and with the
working tree, then compare what they wrote byte for byte.

    python scripts/same_numbers.py --base 0d63e5a            # every case below
    python scripts/same_numbers.py --base HEAD~3 --only fedavg nbafl --keep /tmp/same

For each case it runs ``python -m rvepfl train`` twice, once with the base commit's ``src/`` (a
``git archive`` of it, put first on ``PYTHONPATH``) and once with this tree's, on the same tiny
configuration (bundled MNIST, 300 images, one thread in every process), and compares:

- the six published CSVs and ``client_failures.csv``: byte for byte;
- ``round_timing.csv``: its ``Round#`` and ``Clients`` columns (the others are seconds);
- ``partition.npz`` (the arrays) and every tensor of every checkpoint (bit for bit);
- ``summary.json``'s ``method_details`` (noise levels, budgets): equal.

With ``--legacy-resume`` it also checks that a run directory made by the base commit resumes
with this tree: the base trains the ``rvepfl`` case and is SIGKILLed after the first client of
round 2 (the base's own ``tests/helpers/crash.py``), this tree resumes it with ``rvepfl train
--resume``, and the result must equal the base's uninterrupted run (as above).

With ``--suites`` it also runs ``rvepfl compare --smoke`` and ``rvepfl audit --smoke`` on
``configs/compare-quick.toml`` and ``configs/audit-quick.toml`` (as each commit has them) and
compares ``table.csv``, ``table.md``, ``audit.csv`` and ``audit.md`` byte for byte (a method the
base lacks is left out of both files first).

With ``--attacks`` it also attacks one tiny FedAvg run and one tiny RVE-PFL run (made by the
base commit, on 300 of the bundled digits: the others are kept out, the evaluator's and mia's) with
every attack and threat model the base commit has (:data:`ATTACK_JOBS`, a few iterations each),
once with each tree, and compares each attack's ``scores.csv`` without its ``seconds`` column
and the scores of its ``summary.json``.

Exit status 0 when everything is equal, 1 when something differs (each difference is printed).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--subset", "300", "--clients", "3", "--rounds", "2", "--local-epochs", "1", "--batch-size", "32",
    "--threads", "1", "--workers", "1", "--device", "cpu", "--quiet",
]
#: name -> extra train arguments. Every method of the base commit, and the settings that take
#: other paths through the engine (sampling, weighting, the decay clock, worker processes).
CASES: dict[str, list[str]] = {
    "rvepfl": ["--method", "rvepfl"],
    "fedavg": ["--method", "fedavg"],
    "fedper": ["--method", "fedper"],
    "fedrep": ["--method", "fedrep", "--set", "personal.head_epochs=2"],
    "nbafl": ["--method", "nbafl", "--set", "nbafl.epsilon=5"],
    "dp-fedavg": ["--method", "dp-fedavg", "--set", "dp_fedavg.noise_multiplier=0.5"],
    "dp-sgd": ["--method", "dp-sgd"],
    "rvepfl-options": ["--method", "rvepfl", "--set", "model.kl_weight=0.5", "--set", "model.sample_at_eval=false",
                       "--set", "train.aggregation=\"weighted\"", "--set", "train.lr_decay_clock=\"client\""],
    "fedavg-sampled": ["--method", "fedavg", "--client-fraction", "0.67", "--set", "train.checkpoint_every=1"],
    "rvepfl-workers": ["--method", "rvepfl", "--workers", "2"],
    "rvepfl+nbafl": ["--method", "rvepfl+nbafl", "--set", "nbafl.epsilon=5"],
    "ditto+dp-fedavg": ["--method", "ditto+dp-fedavg", "--set", "dp_fedavg.noise_multiplier=0.5"],
}


#: (attack, threat model, extra arguments) of ``--attacks``: every attack of the registry's first
#: commit, under each threat model it serves, at a few iterations.
ATTACK_JOBS: list[tuple[str, str, list[str]]] = [
    ("dlg", "gradient", ["--iterations", "5"]),
    ("idlg", "gradient", ["--iterations", "5"]),
    ("ig", "gradient", ["--iterations", "20", "--restarts", "2"]),
    ("ig", "update", ["--iterations", "20"]),
    ("miface", "released", ["--iterations", "30"]),
    ("miface", "stolen", ["--iterations", "30"]),
    ("mia", "released", ["--references", "2", "--images", "40"]),
    ("mia", "stolen", ["--references", "2", "--images", "40"]),
]
ATTACK_RUN = ["--subset", "300", "--clients", "3", "--rounds", "1", "--local-epochs", "1", "--batch-size", "32",
              "--threads", "1", "--workers", "1", "--device", "cpu", "--quiet"]


def _attack_scores(out: Path) -> tuple[list[list[str]], object]:
    """An attack's ``scores.csv`` without its ``seconds`` column, and its summary's scores."""
    import json

    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    keep = [i for i, name in enumerate(rows[0]) if name != "seconds"]
    summary = json.loads((out / "summary.json").read_text())
    return [[row[i] for i in keep] for row in rows], summary.get("scores", summary.get("metrics"))


def _base_tree(rev: str, dest: Path) -> Path:
    """The base commit's ``src/``, ``configs/`` and ``tests/`` unpacked under ``dest``."""
    blob = subprocess.run(["git", "archive", rev, "src", "configs", "tests"], cwd=ROOT, capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _run(src: Path, args: list[str], cwd: Path, *, module: str = "rvepfl", env: dict[str, str] | None = None,
         expect: int = 0) -> None:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", **(env or {}))
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != expect:
        raise SystemExit(f"{module} {' '.join(args)} exited with {done.returncode} (expected {expect}) with "
                         f"{src}:\n{done.stderr[-3000:]}")


def _timing_columns(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    keep = [rows[0].index("Round#"), rows[0].index("Clients")]
    return [[row[i] for i in keep] for row in rows]


def _tensors(path: Path) -> dict[str, bytes]:
    from safetensors.numpy import load_file

    return {k: v.tobytes() + str(v.dtype).encode() + str(v.shape).encode() for k, v in load_file(path).items()}


def compare_runs(a: Path, b: Path) -> list[str]:
    """The differences between two run directories' numbers (empty: the same)."""
    import numpy as np

    diffs: list[str] = []
    for name in sorted(p.name for p in (a / "metrics").glob("*.csv")):
        fa, fb = a / "metrics" / name, b / "metrics" / name
        if not fb.exists():
            diffs.append(f"{name}: missing in {b}")
        elif name == "round_timing.csv":
            if _timing_columns(fa) != _timing_columns(fb):
                diffs.append(f"{name}: rounds or client counts differ")
        elif fa.read_bytes() != fb.read_bytes():
            diffs.append(f"{name}: bytes differ")
    with np.load(a / "partition.npz") as pa, np.load(b / "partition.npz") as pb:
        if sorted(pa) != sorted(pb) or any(not np.array_equal(pa[k], pb[k]) for k in pa):
            diffs.append("partition.npz differs")
    ca = sorted(p.relative_to(a) for p in (a / "checkpoints").rglob("*.safetensors"))
    cb = sorted(p.relative_to(b) for p in (b / "checkpoints").rglob("*.safetensors"))
    if ca != cb:
        diffs.append(f"checkpoint files differ: {sorted(set(map(str, ca)) ^ set(map(str, cb)))}")
    for rel in ca:
        if (b / rel).exists() and _tensors(a / rel) != _tensors(b / rel):
            diffs.append(f"{rel}: tensors differ")
    import json

    details = [json.loads((run / "summary.json").read_text()).get("method_details") for run in (a, b)]
    if details[0] != details[1]:
        diffs.append(f"summary.json's method_details differ: {details[0]} != {details[1]}")
    return diffs


def _suite_file(src_configs: Path, name: str, methods: set[str], dest: Path) -> Path:
    """``name`` from ``src_configs`` with its method list cut to ``methods`` (those both commits have)."""
    import tomllib

    import tomli_w

    values = tomllib.loads((src_configs / name).read_text())
    values["methods"] = [m for m in values["methods"] if m in methods]
    for table in ("overrides",):
        values[table] = {k: v for k, v in values.get(table, {}).items() if k in methods}
    dest.write_text(tomli_w.dumps(values))
    return dest


def _methods(src: Path) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-m", "rvepfl", "methods"], env=env, capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip() and not line.startswith(" ")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with (e.g. HEAD~1)")
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), help="run only these cases")
    parser.add_argument("--suites", action="store_true", help="also compare the compare and audit smoke tables")
    parser.add_argument("--legacy-resume", action="store_true",
                        help="also resume, with this tree, a run the base commit made and was stopped in")
    parser.add_argument("--attacks", action="store_true",
                        help="also compare every attack's scores on a tiny FedAvg and a tiny RVE-PFL run")
    parser.add_argument("--keep", type=Path, help="keep the runs in this directory (default: a temporary one)")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="same-numbers-"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty: give an empty or new --keep directory")
    work.mkdir(parents=True, exist_ok=True)
    base = _base_tree(args.base, work / "base-tree")
    trees = {"base": base / "src", "head": ROOT / "src"}
    failed = False
    for case in args.only or list(CASES):
        for side, src in trees.items():
            _run(src, ["train", *TINY, *CASES[case], "--out", str(work / side / case)], work)
        diffs = compare_runs(work / "base" / case, work / "head" / case)
        failed |= bool(diffs)
        print(f"{case}: {'same' if not diffs else 'DIFFERENT: ' + '; '.join(diffs)}", flush=True)
    if args.legacy_resume:
        case, legacy = "rvepfl", work / "legacy" / "rvepfl"
        if not (work / "base" / case).exists():
            _run(trees["base"], ["train", *TINY, *CASES[case], "--out", str(work / "base" / case)], work)
        point = '{"at": "client_done", "round": 2, "index": 0}'
        _run(Path(f"{trees['base']}{os.pathsep}{base}"), ["train", *TINY, *CASES[case], "--out", str(legacy)], base,
             module="tests.helpers.crash", env={"RVEPFL_TEST_CRASH": point}, expect=-9)
        _run(trees["head"], ["train", "--resume", str(legacy), "--quiet"], work)
        diffs = compare_runs(work / "base" / case, legacy)
        failed |= bool(diffs)
        print(f"{case} made by the base, stopped in round 2, resumed here: "
              f"{'same' if not diffs else 'DIFFERENT: ' + '; '.join(diffs)}", flush=True)
    if args.suites:
        common = _methods(trees["base"]) & _methods(trees["head"])
        for command, name, files in (("compare", "compare-quick.toml", ("table.csv", "table.md")),
                                     ("audit", "audit-quick.toml", ("audit.csv", "audit.md"))):
            outs = {}
            for side, src in trees.items():
                configs = base / "configs" if side == "base" else ROOT / "configs"
                spec = _suite_file(configs, name, common, work / f"{side}-{name}")
                outs[side] = work / f"{side}-{command}"
                _run(src, [command, "--config", str(spec), "--smoke", "--quiet", "--out", str(outs[side])], work)
            for f in files:
                same = (outs["base"] / f).read_bytes() == (outs["head"] / f).read_bytes()
                failed |= not same
                print(f"{command} --smoke {f}: {'same' if same else 'DIFFERENT'}", flush=True)
    if args.attacks:
        for method in ("fedavg", "rvepfl"):
            run = work / "attacked" / method
            # 300 of the 10,000 bundled digits: the rest are kept out (the evaluator's and mia's)
            _run(trees["base"], ["train", *ATTACK_RUN, "--method", method, "--out", str(run)], work)
            text = (run / "config.toml").read_text()
            for attack, threat, extra in ATTACK_JOBS:
                outs = {side: work / f"{side}-attacks" / method / f"{attack}-{threat}" for side in trees}
                for side, src in trees.items():
                    _run(src, ["attack", attack, "--run", str(run), "--threat-model", threat, *extra,
                               "--evaluator-images", "500", "--threads", "1", "--quiet", "--out", str(outs[side])],
                         work)
                same = _attack_scores(outs["base"]) == _attack_scores(outs["head"])
                failed |= not same
                print(f"{method}: {attack} ({threat}): {'same' if same else 'DIFFERENT'}", flush=True)
            if (run / "config.toml").read_text() != text:
                raise SystemExit(f"{run}: an attack changed the run directory's config")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    print("everything equal" if not failed else "differences found")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
