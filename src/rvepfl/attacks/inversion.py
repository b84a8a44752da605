"""The family of model-inversion attacks: threat models ``released`` and ``stolen``, one image per
class, scored against the class's real training images.

A member of the family says which model it inverts (:meth:`InversionAttack.victim`) and how
(:meth:`InversionAttack.invert`, returning an :class:`Inversion`), and inherits the rest: the
evaluator's labels, MSE, PSNR and SSIM against the class's mean and nearest real training image
(every client's training images for a released model, the victim's for a stolen one),
``scores.csv`` (one row per class), ``reconstructions.safetensors``, ``grid.png`` (the class's
mean real image above each inverted one) and ``summary.json`` last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rvepfl.attacks.base import (
    Attack,
    AttackRequest,
    AttackSettings,
    Log,
    check_evaluator_images,
    evaluator_labels,
    image_grid,
    parse_params,
    reconstruction_summary,
)
from rvepfl.attacks.scores import class_scores, to_pixels
from rvepfl.attacks.threat import Target
from rvepfl.errors import ConfigError
from rvepfl.io import save_tensors, write_csv, write_json

__all__ = ["Inversion", "InversionAttack", "SCORE_COLUMNS"]

SCORE_COLUMNS = ["mean_mse", "mean_psnr", "mean_ssim", "nearest_mse", "nearest_psnr", "nearest_ssim",
                 "evaluator_label", "evaluator_correct"]
"""The columns every member's ``scores.csv`` has, after its own and before ``seconds``."""
_KIND = "rvepfl-attack-reconstructions"


@dataclass(frozen=True)
class Inversion:
    """What an inversion gives: one image per class in [0, 1] pixels, and the member's own
    columns of each class's row (its ``columns``, in that order)."""

    pixels: torch.Tensor
    classes: torch.Tensor
    columns: dict[str, list[Any]]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    """Entries for the summary (e.g. a control's share), merged into it."""


class InversionAttack(Attack):
    """An attack that inverts a released or stolen model into one image per class."""

    threats = ("released", "stolen")
    surface = "inverts a model, not an upload"
    success_label = "classes recognised (%)"
    audit_options = ("iterations", "restarts", "evaluator_images")
    scores_psnr = "nearest_psnr"
    scores_ssim = "nearest_ssim"
    own_columns: ClassVar[tuple[str, ...]] = ()
    """The member's columns of ``scores.csv``, after ``class`` (``Inversion.columns``' keys)."""

    def invert(self, target: Target, settings: AttackSettings, log: Log, status: Log | None, *,
               evaluator: Any | None, cache: Path) -> Inversion:
        """The attack proper."""
        raise NotImplementedError

    @property
    def columns(self) -> list[str]:
        return ["class", *self.own_columns, *SCORE_COLUMNS, "seconds"]

    def resolve(self, target: Target, request: AttackRequest) -> AttackSettings:
        threat = self.check_threat(request.threat)
        if request.references is not None:
            raise ConfigError(f"--references applies to mia only, got {self.name}")
        if request.local_steps is not None:
            raise ConfigError(f"--local-steps applies to --threat-model update only, got --threat-model {threat}")
        check_evaluator_images(request.evaluator_images)
        r = target.check_round(request.round)
        target.check_client(request.client)
        if request.batch_size < 1:
            raise ConfigError(f"Expected --batch-size >= 1, got {request.batch_size}")
        iterations, restarts = self.iterations_and_restarts(request)
        return AttackSettings(self.name, threat, r, request.client, 1, target.num_classes, iterations, request.seed,
                              restarts, 0, request.evaluator_images, params=parse_params(self, request.params))

    def panel_title(self, threat: str) -> str:
        return f"{self.label}, {threat} model"

    def run(self, target: Target, settings: AttackSettings, out: Path, log: Log, *,
            cache: Path | None = None, status: Log | None = None) -> dict[str, Any]:
        """Invert, score against the class's real images, write ``out`` (see the module doc).

        A complete attack with these settings is skipped, unless it has no evaluator's labels and
        an evaluator can now be had: then it runs again.
        """
        s = settings
        cache = cache or target.run.path / "attacks"
        done, evaluator, evaluator_note = self.evaluator_unless_done(target, s, out, log, cache)
        if done is not None:
            return done
        digest = s.digest()
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        result = self.invert(target, s, log, status, evaluator=evaluator, cache=cache)
        pixels, classes = result.pixels, result.classes
        # The class's real images: every client's training images (stolen: the victim client's).
        if s.threat == "stolen":
            data = target.fed.client_data(s.client)
            real_x, real_y = data.train_x.cpu(), data.train_y.cpu()
        else:
            idx = np.concatenate([c.train for c in target.fed.partition.clients])
            t = torch.from_numpy(idx)
            real_x, real_y = target.fed.pool_x.cpu()[t], target.fed.pool_y.cpu()[t]
        real = to_pixels(real_x.clone(), target.dataset)
        scores = class_scores(pixels, classes, real, real_y)
        labels = evaluator_labels(evaluator, pixels)
        rows = []
        means = []
        for i, c in enumerate(classes.tolist()):
            rows.append({
                "class": c, **{k: result.columns[k][i] for k in self.own_columns},
                "mean_mse": float(scores["mean_mse"][i]), "mean_psnr": float(scores["mean_psnr"][i]),
                "mean_ssim": float(scores["mean_ssim"][i]), "nearest_mse": float(scores["nearest_mse"][i]),
                "nearest_psnr": float(scores["nearest_psnr"][i]), "nearest_ssim": float(scores["nearest_ssim"][i]),
                "evaluator_label": labels[i], "evaluator_correct": "" if labels[i] == "" else int(labels[i] == c),
                "seconds": float(result.seconds) / len(classes),
            })
            means.append(real[real_y == c].mean(0) if bool((real_y == c).any()) else torch.zeros_like(pixels[i]))
        columns = self.columns
        write_csv(out / "scores.csv", columns, [[r[c] for c in columns] for r in rows])
        truth = torch.stack(means)
        save_tensors(out / "reconstructions.safetensors", {"truth": truth, "reconstruction": pixels},
                     {"format": _KIND, "settings_digest": digest})
        seconds = time.perf_counter() - started
        image_grid(out / "grid.png", truth, pixels, [f"class {r['class']}" for r in rows],
                   f"{target.method.name} / {s.attack} / {s.threat}: round {s.round}, client {s.client}")
        # The summary last: "complete" in it means every other file is written.
        summary = reconstruction_summary(target, s, rows, evaluator, evaluator_note, seconds, digest,
                                         status="complete")
        summary.update(result.extra)
        write_json(out / "summary.json", summary)
        return summary
