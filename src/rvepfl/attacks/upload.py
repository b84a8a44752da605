"""The family of attacks on an observed upload: threat models ``gradient`` (one local step) and
``update`` (a client's whole local round), one reconstruction per attacked image.

A member of the family names its algorithm, a function ``(GradientObservation, *, iterations,
restarts, seed, progress) -> Reconstruction`` (:func:`rvepfl.attacks.dlg.dlg`,
:func:`rvepfl.attacks.inverting.inverting_gradients`), and inherits the rest:
``images / batch_size`` observations are attacked one after another; after each, ``scores.csv``,
``reconstructions.safetensors`` and ``summary.json`` (with the resume point) are rewritten
atomically, so an interrupted attack resumes where it stopped when the same command is run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
from rvepfl.attacks.common import Tracker, read_summary
from rvepfl.attacks.observation import Reconstruction
from rvepfl.attacks.scores import image_scores, to_pixels
from rvepfl.attacks.threat import THREAT_MODELS, Target
from rvepfl.errors import CheckpointError, ConfigError
from rvepfl.io import load_tensors, read_csv_rows, save_tensors, write_csv, write_json
from rvepfl.seeding import derive_seed

__all__ = ["GRADIENT_COLUMNS", "RECONSTRUCTIONS_KIND", "UploadAttack", "match_to_truth"]

GRADIENT_COLUMNS = ["image", "draw", "round", "client", "label", "attack_label", "mse", "psnr", "ssim",
                    "evaluator_label", "evaluator_correct", "seconds"]
RECONSTRUCTIONS_KIND = "rvepfl-attack-reconstructions"


class UploadAttack(Attack):
    """An attack on what an honest-but-curious server sees of a client's upload."""

    threats = ("gradient", "update")
    surface = "inverts an observed upload"
    default_restarts = 1
    audit_options = ("batch_size", "images", "iterations", "restarts", "local_steps", "evaluator_images")

    algorithm: ClassVar[Callable[..., Reconstruction]]
    """The attack proper, ``(observation, *, iterations, restarts, seed, progress) ->
    Reconstruction``: a reconstruction of the observed batch (set as ``staticmethod(function)``)."""

    def resolve(self, target: Target, request: AttackRequest) -> AttackSettings:
        threat = self.check_threat(request.threat)
        if request.references is not None:
            raise ConfigError(f"--references applies to mia only, got {self.name}")
        if threat != "update" and request.local_steps is not None:
            raise ConfigError(f"--local-steps applies to --threat-model update only, got --threat-model {threat}")
        steps = 0
        if threat == "update":
            steps = target.cfg.train.local_epochs if request.local_steps is None else request.local_steps
            if steps < 1:
                raise ConfigError(f"Expected --local-steps >= 1, got {steps}")
        check_evaluator_images(request.evaluator_images)
        r = target.check_round(request.round)
        target.check_client(request.client)
        batch_size = request.batch_size
        if batch_size < 1:
            raise ConfigError(f"Expected --batch-size >= 1, got {batch_size}")
        if self.needs_single_image and batch_size != 1:
            raise ConfigError(f"{self.label} reads the label of a single image: use --batch-size 1, got {batch_size}")
        n_images = request.images if request.images is not None else batch_size * 4
        if n_images < batch_size or n_images % batch_size:
            raise ConfigError(f"Expected --images to be a positive multiple of --batch-size {batch_size}, got {n_images}")
        iterations, restarts = self.iterations_and_restarts(request)
        return AttackSettings(self.name, threat, r, request.client, batch_size, n_images, iterations, request.seed,
                              restarts, steps, request.evaluator_images, params=parse_params(self, request.params))

    def open(self, target: Target, settings: AttackSettings, cache: Path | None = None) -> None:
        target.gradient_surface(settings.round, settings.client)

    def run(self, target: Target, settings: AttackSettings, out: Path, log: Log, *,
            cache: Path | None = None, status: Log | None = None) -> dict[str, Any]:
        """Attack ``settings.images`` of the victim's images in batches (see the module doc).

        A complete attack with these settings is skipped, unless it has no evaluator's labels and
        an evaluator can now be had (it was scored before that fallback existed): then it runs again.
        """
        done, evaluator, evaluator_note = self.evaluator_unless_done(target, settings, out, log, cache)
        if done is not None:
            return done
        digest = settings.digest()
        out.mkdir(parents=True, exist_ok=True)
        rows, truth, recon, titles, seconds = self._observations(target, settings, evaluator, out, digest, log, status)
        threat = THREAT_MODELS[settings.threat]
        image_grid(out / "grid.png", truth, recon, titles,
                   f"{target.method.name} / {settings.attack} / {threat.name}: round {settings.round}, "
                   f"client {settings.client}")
        # The summary last: "complete" in it means every other file is written.
        summary = reconstruction_summary(target, settings, rows, evaluator, evaluator_note, seconds, digest,
                                         status="complete")
        write_json(out / "summary.json", summary)
        return summary

    def _observations(self, target: Target, s: AttackSettings, evaluator: Any | None, out: Path, digest: str,
                      log: Log, status: Log | None = None):
        draws = s.images // s.batch_size
        rows: list[dict[str, Any]] = []
        truth: list[torch.Tensor] = []
        recon: list[torch.Tensor] = []
        elapsed = 0.0
        start_draw = 0
        summary_path, recon_path = out / "summary.json", out / "reconstructions.safetensors"
        if summary_path.is_file() and recon_path.is_file():
            try:
                old = read_summary(summary_path)
                if old.get("settings_digest") == digest and old.get("status") == "running":
                    saved = load_tensors(recon_path, kind=RECONSTRUCTIONS_KIND)
                    header_rows = _read_rows(out / "scores.csv")
                    start_draw = int(old["draws_done"])
                    rows = header_rows[: start_draw * s.batch_size]
                    truth = list(saved["truth"][: start_draw * s.batch_size])
                    recon = list(saved["reconstruction"][: start_draw * s.batch_size])
                    elapsed = float(old.get("seconds", 0.0))
                    if evaluator is not None and any(r["evaluator_label"] == "" for r in rows):
                        # stopped before an evaluator could be had (a run that used every image)
                        log("starting afresh: the stopped attack was scored without an evaluator")
                        start_draw, rows, truth, recon, elapsed = 0, [], [], [], 0.0
                    else:
                        log(f"resuming after {start_draw}/{draws} observations")
            except (OSError, ValueError, KeyError, CheckpointError):
                start_draw, rows, truth, recon, elapsed = 0, [], [], [], 0.0
        per_draw = s.iterations * s.restarts
        tracker = Tracker(draws * per_draw, status)
        for draw in range(start_draw, draws):
            t0 = time.perf_counter()
            x, gt = target.client_batch(s.client, s.batch_size, draw, s.seed)
            if s.threat == "update":
                obs = target.observe_update(s.round, s.client, x, gt.labels, local_steps=s.local_steps, seed=s.seed,
                                            draw=draw)
            else:
                obs = target.observe_gradient(s.round, s.client, x, gt.labels, s.seed, draw)
            # The attack's own random draws (its initial guesses): a stream of its own for this observation.
            attack_seed = derive_seed(s.seed, "attack", s.round, s.client, draw, 3)
            progress = tracker.progress(draw * per_draw, lambda done, total, d=draw: (
                f"{s.attack}: observation {d + 1}/{draws}, iteration {done}/{total}"))
            result = self.algorithm(obs, iterations=s.iterations, restarts=s.restarts, seed=attack_seed,
                                    progress=progress)
            pixels = to_pixels(result.inputs.detach().float().cpu(), target.dataset)
            # A gradient does not say which reconstruction is which image of the batch: match them
            # to the truth by the assignment of least total MSE (the identity at batch 1).
            order = match_to_truth(pixels, gt.pixels)
            pixels = pixels[order]
            attack_labels = result.labels[order] if result.labels is not None else None
            scores = image_scores(pixels, gt.pixels)
            labels = evaluator_labels(evaluator, pixels)
            per = (time.perf_counter() - t0) / s.batch_size
            for i in range(s.batch_size):
                true_label = int(gt.labels[i])
                rows.append({
                    "image": gt.indices[i], "draw": draw, "round": s.round, "client": s.client,
                    "label": true_label, "attack_label": int(attack_labels[i]) if attack_labels is not None else "",
                    "mse": float(scores["mse"][i]), "psnr": float(scores["psnr"][i]),
                    "ssim": float(scores["ssim"][i]), "evaluator_label": labels[i],
                    "evaluator_correct": "" if labels[i] == "" else int(labels[i] == true_label),
                    "seconds": per,
                })
            truth.extend(gt.pixels)
            recon.extend(pixels)
            elapsed += time.perf_counter() - t0
            mean_psnr = np.mean([r["psnr"] for r in rows[-s.batch_size:]])
            left = f"; {tracker.left((draw + 1) * per_draw)}" if draw + 1 < draws else ""
            log(f"{s.attack}: observation {draw + 1}/{draws} (batch {s.batch_size}): PSNR {mean_psnr:.1f} dB, "
                f"{time.perf_counter() - t0:.1f} s{left}")
            # Commit: scores and reconstructions first, the summary (with the resume point) last.
            write_csv(out / "scores.csv", GRADIENT_COLUMNS, [[r[c] for c in GRADIENT_COLUMNS] for r in rows])
            save_tensors(recon_path, {"truth": torch.stack(truth), "reconstruction": torch.stack(recon)},
                         {"format": RECONSTRUCTIONS_KIND, "settings_digest": digest})
            partial = reconstruction_summary(target, s, rows, evaluator, "", elapsed, digest, status="running")
            partial["draws_done"] = draw + 1
            write_json(summary_path, partial)
        titles = [f"#{r['image']} y={r['label']}" for r in rows]
        return rows, torch.stack(truth), torch.stack(recon), titles, elapsed


def match_to_truth(reconstructed: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The permutation of ``reconstructed`` that pairs it with ``truth`` at least total MSE.

    >>> a = torch.zeros(2, 1, 2, 2); a[1] += 1
    >>> match_to_truth(a, a.flip(0)).tolist()
    [1, 0]
    """
    if len(truth) == 1:
        return torch.zeros(1, dtype=torch.int64)
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(truth.flatten(1).double(), reconstructed.flatten(1).double()).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return torch.from_numpy(cols[np.argsort(rows)]).long()


def _read_rows(path: Path) -> list[dict[str, Any]]:
    header, raw = read_csv_rows(path)
    out = []
    for values in raw:
        row: dict[str, Any] = {}
        for k, v in zip(header, values):
            if v == "":
                row[k] = ""
            else:
                try:
                    row[k] = int(v)
                except ValueError:
                    row[k] = float(v)
        out.append(row)
    return out
