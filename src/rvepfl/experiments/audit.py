"""``rvepfl audit``: train (or reuse) every run of a comparison, attack each, one table, one plot.

An audit file is a compare file (see :mod:`rvepfl.experiments.compare`) with one more table::

    [audit]
    attacks = ["dlg", "idlg", "ig", "miface"]   # any of dlg, idlg, ig, miface
    miface_threats = ["released", "stolen"]     # the model-inversion threat models to run
    update_attacks = ["ig"]                     # gradient attacks also run on the whole local
                                                # update (threat model `update`; default none)
    local_steps = 2                             # its local steps (default: train.local_epochs)
    client = 0                                  # the victim client of every run
    images = 4                                  # images per gradient attack
    batch_size = 1                              # images per observed gradient or update
    evaluator_images = 3000                     # held-out images the evaluator trains on
    seed = 0                                    # the attacks' seed
    [audit.iterations]                          # optional, per attack or per attack-threat
    ig = 1000                                   # (the more specific key wins)
    ig-update = 500
    [audit.restarts]                            # optional, the same keys (default 1; not miface)
    dlg = 2

The jobs of a run are every attack under its threat models: ``gradient`` for dlg, idlg and ig,
and ``update`` too for those in ``update_attacks``; ``miface_threats`` for miface. Runs are
trained exactly as ``rvepfl compare`` trains them (complete runs are skipped), under
``<out>/runs/<dataset>-<method>-seed<k>/``; each attack writes into that run's
``attacks/<attack>-<threat>/`` and is skipped when complete with the same settings, resumed when
interrupted. A
method/threat pair that has no attack surface (FedPer and FedRep keep a private head, so they
have neither a gradient surface nor a released model that classifies) is listed as such.
Then ``<out>`` receives:

- ``audit.csv``: one row per run and attack: dataset, method, seed, accuracy (final mean client
  test accuracy), attack, threat, images, and the mean of each score over that run's images;
- ``audit.md``: per data set, accuracy beside each attack's PSNR, SSIM and evaluator accuracy,
  mean ± std over the images of every seed pooled;
- ``privacy_utility_<dataset>.png``: per attack, each method's accuracy against the evaluator's
  accuracy on its reconstructions (lower = less leaked).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rvepfl.errors import ConfigError, RvepflError
from rvepfl.config import read_toml_file
from rvepfl.experiments.compare import CompareSpec, compare_from_dict, run_compare
from rvepfl.io import atomic_write_bytes, atomic_write_text, write_csv

__all__ = ["AuditSpec", "load_audit", "run_audit"]

_AUDIT_KEYS = ("attacks", "miface_threats", "update_attacks", "local_steps", "client", "images", "batch_size",
               "evaluator_images", "seed", "iterations", "restarts")


@dataclass(frozen=True)
class AuditSpec:
    compare: CompareSpec
    attacks: tuple[str, ...]
    miface_threats: tuple[str, ...]
    client: int
    images: int
    batch_size: int
    evaluator_images: int
    seed: int
    iterations: dict[str, int]
    update_attacks: tuple[str, ...] = ()
    local_steps: int | None = None
    """Local steps of the observed round (threat model ``update``); None: each run's train.local_epochs."""
    restarts: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def setting(self, table: str, attack: str, threat: str) -> int | None:
        """``iterations`` or ``restarts`` of one job: its ``attack-threat`` key, else its attack's, else None."""
        values: dict[str, int] = getattr(self, table)
        return values.get(f"{attack}-{threat}", values.get(attack))

    def jobs(self) -> list[tuple[str, str]]:
        """(attack, threat) pairs, in order."""
        out = []
        for attack in self.attacks:
            if attack == "miface":
                threats: tuple[str, ...] = self.miface_threats
            else:
                threats = ("gradient", "update") if attack in self.update_attacks else ("gradient",)
            out.extend((attack, t) for t in threats)
        return out


def audit_from_dict(values: dict[str, Any], *, smoke: bool = False, source: str = "",
                    default_name: str = "audit") -> AuditSpec:
    from rvepfl.attacks.runner import ATTACK_NAMES, MIN_EVALUATOR_DRAW, UPLOAD_THREATS

    values = dict(values)
    audit = values.pop("audit", None)
    if not isinstance(audit, dict):
        raise ConfigError("Expected an [audit] table (attacks, miface_threats, client, images, ...)")
    for key in audit:
        if key not in _AUDIT_KEYS:
            raise ConfigError(f"Unknown audit key `audit.{key}`: allowed: {', '.join(_AUDIT_KEYS)}")
    spec = compare_from_dict(values, smoke=smoke, source=source, default_name=default_name)

    def names(key: str, allowed: tuple[str, ...], default: list[str]) -> tuple[str, ...]:
        value = audit.get(key, default)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"Expected `audit.{key}` to be a non-empty list of names, got {value!r}")
        for v in value:
            if v not in allowed:
                raise ConfigError(f"Unknown name {v!r} in `audit.{key}`: choose from {', '.join(allowed)}")
        return tuple(dict.fromkeys(value))

    def integer(key: str, default: int, minimum: int) -> int:
        value = audit.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"Expected `audit.{key}` to be an integer >= {minimum}, got {value!r}")
        return value

    def per_job(key: str, allowed: tuple[str, ...]) -> dict[str, int]:
        table = audit.get(key, {})
        if not isinstance(table, dict):
            raise ConfigError(f"Expected `audit.{key}` to be a table of attack = count, got {table!r}")
        for k, v in table.items():
            if k not in allowed or isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"Expected `audit.{key}.{k}` to name one of {', '.join(allowed)} and be an "
                                  f"integer >= 1, got {v!r}")
        return dict(table)

    attacks = names("attacks", ATTACK_NAMES, list(ATTACK_NAMES))
    threats = names("miface_threats", ("released", "stolen"), ["released", "stolen"])
    gradient_attacks = tuple(a for a in ATTACK_NAMES if a != "miface")
    update_attacks = names("update_attacks", gradient_attacks, []) if audit.get("update_attacks", []) != [] else ()
    for a in update_attacks:
        if a not in attacks:
            raise ConfigError(f"Expected `audit.update_attacks` to name attacks that `audit.attacks` runs "
                              f"({', '.join(attacks)}), got {a!r}")
    local_steps = integer("local_steps", 1, 1) if "local_steps" in audit else None
    pairs = tuple(f"{a}-{t}" for a in gradient_attacks for t in UPLOAD_THREATS)
    iterations = per_job("iterations", ATTACK_NAMES + pairs + ("miface-released", "miface-stolen"))
    restarts = per_job("restarts", gradient_attacks + pairs)
    batch = integer("batch_size", 1, 1)
    images = integer("images", 4, 1)
    if images % batch:
        raise ConfigError(f"Expected `audit.images` to be a multiple of `audit.batch_size` ({batch}), got {images}")
    if "idlg" in attacks and batch != 1:
        raise ConfigError("iDLG reads the label of a single image: set `audit.batch_size = 1` or drop idlg")
    client = integer("client", 0, 0)
    for r in spec.runs:
        if client >= r.cfg.data.num_clients:
            raise ConfigError(f"Expected `audit.client` < {r.cfg.data.num_clients} (clients of {r.label}), got {client}")
    evaluator_images = integer("evaluator_images", 3000, MIN_EVALUATOR_DRAW)
    if smoke:
        iterations = {a: 3 for a in ATTACK_NAMES}
        restarts = {}
        images = batch
        evaluator_images = min(evaluator_images, 600)
    return AuditSpec(spec, attacks, threats, client, images, batch, evaluator_images, integer("seed", 0, 0),
                     iterations, update_attacks, local_steps, restarts, source)


def load_audit(path: str | Path, *, smoke: bool = False) -> AuditSpec:
    """Load and validate an audit file (see the module docstring)."""
    path = Path(path)
    text, values = read_toml_file(path, "audit file")
    try:
        return audit_from_dict(values, smoke=smoke, source=text, default_name=path.stem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@dataclass
class AuditReport:
    out: Path
    markdown: str
    rows: list[dict[str, Any]]
    plots: list[Path]


def run_audit(spec: AuditSpec, out: str | Path | None = None, *, progress: Any = None,
              log: Callable[[str], None] | None = None) -> AuditReport:
    """Train or reuse every run, attack each, then write audit.csv, audit.md and the plots."""
    from rvepfl.attacks.runner import resolve_settings, run_attack
    from rvepfl.attacks.threat import Target
    from rvepfl.experiments.compare import default_out

    say = log or (lambda line: None)
    out = Path(out) if out is not None else default_out(spec.compare)
    report = run_compare(spec.compare, out, progress=progress, log=say)
    final = {c.dataset + "/" + c.method: c for c in report.cells}
    rows: list[dict[str, Any]] = []
    per_image: dict[tuple[str, str, str, str], list[dict[str, str]]] = {}
    jobs = spec.jobs()
    for r in spec.compare.runs:
        run_dir = out / "runs" / r.label
        if r.cfg.threads:  # the run config's thread count holds for its attacks too
            torch.set_num_threads(r.cfg.threads)
        target = Target(run_dir)
        acc = final[r.dataset + "/" + r.method].accs[spec.compare.seeds.index(r.seed)]
        for attack, threat in jobs:
            prefix = f"[{r.label}] {attack} ({threat})"
            try:
                settings = resolve_settings(
                    target, attack, threat=threat, round_=None, client=spec.client,
                    batch_size=1 if attack == "miface" else spec.batch_size,
                    images=None if attack == "miface" else spec.images,
                    iterations=spec.setting("iterations", attack, threat), seed=spec.seed,
                    restarts=spec.setting("restarts", attack, threat) or 1,
                    local_steps=spec.local_steps if threat == "update" else None,
                    evaluator_images=spec.evaluator_images)
                if attack != "miface":
                    target.gradient_surface(settings.round, spec.client)
                else:
                    target.inversion_model(threat, settings.round, spec.client)
            except RvepflError as exc:
                say(f"{prefix}: no attack surface ({exc})")
                rows.append({"dataset": r.dataset, "method": r.method, "seed": r.seed, "accuracy": acc,
                             "attack": attack, "threat": threat, "images": 0, "note": str(exc)})
                continue
            dest = run_dir / "attacks" / f"{attack}-{threat}"
            summary = run_attack(target, settings, dest, lambda line, p=prefix: say(f"{p}: {line}"),
                                 evaluator_cache=out / "evaluators")
            with open(dest / "scores.csv", newline="") as fh:
                table = list(csv.DictReader(fh))
            per_image.setdefault((r.dataset, r.method, attack, threat), []).extend(table)
            scores = summary["scores"]
            rows.append({
                "dataset": r.dataset, "method": r.method, "seed": r.seed, "accuracy": acc, "attack": attack,
                "threat": threat, "images": summary["rows"],
                **{k: v["mean"] for k, v in scores.items()},
                "evaluator_accuracy": summary["evaluator_accuracy_on_attacks"],
                "evaluator_test_accuracy": summary["evaluator_test_accuracy"], "note": "",
            })
            say(f"{prefix}: done ({summary['rows']} rows)")
    columns = sorted({k for row in rows for k in row}, key=lambda k: (_ORDER.index(k) if k in _ORDER else 99, k))
    write_csv(out / "audit.csv", columns, [[_fmt(row.get(c, "")) for c in columns] for row in rows])
    markdown = _markdown(spec, final, per_image, rows)
    atomic_write_text(out / "audit.md", markdown)
    if spec.source:
        atomic_write_text(out / "audit.toml", spec.source)
    plots = [_plot(out / f"privacy_utility_{d}.png", spec, d, final, per_image) for d in spec.compare.datasets]
    return AuditReport(out, markdown, rows, plots)


_ORDER = ["dataset", "method", "seed", "accuracy", "attack", "threat", "images"]


def _fmt(value: Any) -> Any:
    return "" if value is None else value


def _job_name(attack: str, threat: str) -> str:
    """A column name: the attack, with its threat model unless that is ``gradient``."""
    return attack if threat == "gradient" else f"{attack} ({threat})"


def _score_key(attack: str) -> tuple[str, str]:
    """The per-image PSNR and SSIM columns of an attack's scores.csv."""
    return ("nearest_psnr", "nearest_ssim") if attack == "miface" else ("psnr", "ssim")


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    vals = [v * scale for v in values if math.isfinite(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def _column(table: list[dict[str, str]], key: str) -> list[float]:
    out = []
    for row in table:
        if row.get(key, "") != "":
            out.append(float(row[key]))
    return out


def _markdown(spec: AuditSpec, final: dict[str, Any], per_image: dict, rows: list[dict[str, Any]]) -> str:
    lines = [f"# {spec.compare.name}: accuracy and what each attack recovers", ""]
    for dataset in spec.compare.datasets:
        lines.append(f"## {dataset}")
        lines.append("")
        header = ["method", "accuracy (%)"]
        for attack, threat in spec.jobs():
            name = _job_name(attack, threat)
            header += [f"{name} PSNR (dB)", f"{name} SSIM", f"{name} evaluator acc (%)"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in header[1:]) + " |")
        for method in spec.compare.methods:
            cell = final[dataset + "/" + method]
            row = [method, _mean_std(list(cell.accs), 100.0)]
            for attack, threat in spec.jobs():
                table = per_image.get((dataset, method, attack, threat))
                if not table:
                    row += ["n/a", "n/a", "n/a"]
                    continue
                psnr_key, ssim_key = _score_key(attack)
                row += [_mean_std(_column(table, psnr_key)), _mean_std(_column(table, ssim_key), digits=3),
                        _mean_std(_column(table, "evaluator_correct"), 100.0, 0)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "Accuracy: final-round mean client test accuracy, mean ± std over seeds "
        f"{', '.join(map(str, spec.compare.seeds))}. Attack cells: mean ± std over every attacked image "
        "(gradient attacks) or class (MI-Face) of every seed, in [0, 1] pixel space; MI-Face is scored "
        "against the nearest real training image of its class. Evaluator acc: share of reconstructions an "
        "independent classifier, trained on images no client has, labels as the true class (chance is "
        "10 %). n/a: the method exposes no such attack surface (see audit.csv's note).",
        f"Victim client {spec.client}; {spec.images} images per gradient attack, batch {spec.batch_size}.",
    ]
    if spec.update_attacks:
        steps = "each run's train.local_epochs" if spec.local_steps is None else str(spec.local_steps)
        lines.append(
            f"(update): the attack sees the client's whole local round on each batch ({steps} local steps, "
            "the method's own training and upload) as the mean gradient -update / (lr * steps).")
    lines += [
        "",
        "Generated by `rvepfl audit`; do not edit by hand.",
    ]
    return "\n".join(lines) + "\n"


def _plot(path: Path, spec: AuditSpec, dataset: str, final: dict[str, Any], per_image: dict) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    jobs = spec.jobs()
    fig = Figure(figsize=(3.6 * len(jobs), 3.6))
    FigureCanvasAgg(fig)
    for i, (attack, threat) in enumerate(jobs):
        ax = fig.add_subplot(1, len(jobs), i + 1)
        for method in spec.compare.methods:
            table = per_image.get((dataset, method, attack, threat))
            if not table:
                continue
            correct = _column(table, "evaluator_correct")
            if not correct:
                psnr_key, _ = _score_key(attack)
                y, ylabel = float(np.mean(_column(table, psnr_key))), "PSNR (dB)"
            else:
                y, ylabel = 100.0 * float(np.mean(correct)), "evaluator accuracy on reconstructions (%)"
            x = 100.0 * final[dataset + "/" + method].mean
            ax.scatter([x], [y], s=30)
            ax.annotate(method, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel("mean client test accuracy (%)", fontsize=8)
        ax.set_title(_job_name(attack, threat), fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{spec.compare.name} / {dataset}: utility (right) vs leakage (up)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path
