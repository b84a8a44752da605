"""The family of attacks on an observed upload: threat models ``gradient`` (one local step),
``update`` (a client's whole local round) and ``aggregate`` (the mean of k clients' whole rounds,
the server's view under secure aggregation), one reconstruction per attacked image.

Under ``aggregate`` each observation holds the ``--batch-size`` images of each of
``clients_in_sum`` clients (the victim and the next clients of the round,
:meth:`~rvepfl.attacks.threat.Target.sum_clients`; each client's images drawn as the attack on
it alone would draw them), and every one of them is reconstructed and scored: ``scores.csv`` has
a row per image of the sum, its ``client`` column the client that holds it. ``--images`` counts
the victim's images, so a job has ``images x clients_in_sum`` rows.

A member of the family names its algorithm, a function ``(GradientObservation, *, iterations,
restarts, seed, progress) -> Reconstruction`` (:func:`rvepfl.attacks.dlg.dlg`,
:func:`rvepfl.attacks.inverting.inverting_gradients`), and inherits the rest: the attack's
``images / batch_size`` observations are attacked in chunks. An algorithm with a batched form
(``batched_algorithm``: :func:`rvepfl.attacks.inverting.inverting_gradients_batched`) takes a
chunk of up to :attr:`UploadAttack.chunk_observations` observations (and at most
:attr:`UploadAttack.chunk_images` images, restarts counted) as one optimisation; the others
(DLG, iDLG) take one observation at a time, as before. After each chunk, ``scores.csv``,
``reconstructions.safetensors`` and ``summary.json`` (with the resume point, ``draws_done``:
the observations done) are rewritten atomically, so an interrupted attack resumes after its last
complete chunk when the same command is run again. The chunks lie on a fixed grid (observations
``[k * chunk, (k + 1) * chunk)``), so a resumed attack batches its observations as an
uninterrupted one does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rvepfl.attacks.base import (
    DEFAULT_CLIENTS_IN_SUM,
    Attack,
    AttackRequest,
    AttackSettings,
    Log,
    check_clients_in_sum,
    check_evaluator_images,
    evaluator_labels,
    image_grid,
    parse_params,
    reconstruction_summary,
)
from rvepfl.attacks.common import Tracker, read_summary
from rvepfl.attacks.observation import GradientObservation, Reconstruction
from rvepfl.attacks.scores import image_scores, to_pixels
from rvepfl.attacks.threat import THREAT_MODELS, GroundTruth, Target
from rvepfl.errors import CheckpointError, ConfigError
from rvepfl.io import load_tensors, read_csv_rows, save_tensors, write_csv, write_json
from rvepfl.seeding import derive_seed

__all__ = ["GRADIENT_COLUMNS", "RECONSTRUCTIONS_KIND", "UploadAttack", "match_to_truth", "observed_batch"]

GRADIENT_COLUMNS = ["image", "draw", "round", "client", "label", "attack_label", "mse", "psnr", "ssim",
                    "evaluator_label", "evaluator_correct", "seconds"]
RECONSTRUCTIONS_KIND = "rvepfl-attack-reconstructions"


class UploadAttack(Attack):
    """An attack on what an honest-but-curious server sees of a client's upload."""

    threats: ClassVar[tuple[str, ...]] = ("gradient", "update")
    """An attack of the family that also takes ``aggregate`` (the mean of several clients' updates) says so."""
    surface = "inverts an observed upload"
    default_restarts = 1
    audit_options = ("batch_size", "images", "iterations", "restarts", "local_steps", "evaluator_images")

    algorithm: ClassVar[Callable[..., Reconstruction]]
    """The attack proper, ``(observation, *, iterations, restarts, seed, progress) ->
    Reconstruction``: a reconstruction of the observed batch (set as ``staticmethod(function)``)."""

    batched_algorithm: ClassVar[Callable[..., list[Reconstruction]] | None] = None
    """The attack proper on several observations of one model as one computation, ``(observations,
    *, iterations, restarts, seeds, progress) -> [Reconstruction]``, each reconstruction the one
    ``algorithm`` gives that observation with its seed (up to float rounding); None when the
    algorithm has no batched form (set as ``staticmethod(function)``)."""

    chunk_observations: ClassVar[int] = 16
    """The most observations ``batched_algorithm`` takes at once."""

    chunk_images: ClassVar[int] = 64
    """The most images ``batched_algorithm`` optimises at once (observations x restarts x batch
    size; a chunk holds at least one observation), which bounds its memory."""

    def chunk_size(self, settings: AttackSettings) -> int:
        """Observations attacked as one computation: 1 without a batched form.

        >>> from dataclasses import replace
        >>> from rvepfl.attacks.inverting import InvertingGradients
        >>> s = AttackSettings("ig", "gradient", 1, 0, batch_size=1, images=20, iterations=10, seed=0, restarts=2)
        >>> InvertingGradients().chunk_size(s), InvertingGradients().chunk_size(replace(s, batch_size=8, images=40))
        (16, 4)
        """
        if self.batched_algorithm is None:
            return 1
        per_observation = settings.restarts * observed_batch(settings)
        return max(1, min(self.chunk_observations, self.chunk_images // per_observation))

    def resolve(self, target: Target, request: AttackRequest) -> AttackSettings:
        threat = self.check_threat(request.threat)
        if request.references is not None:
            raise ConfigError(f"--references applies to mia only, got {self.name}")
        if threat not in ("update", "aggregate") and request.local_steps is not None:
            also = " (aggregate, a mean of updates, takes it too)" if "aggregate" in self.threats else ""
            raise ConfigError(f"--local-steps applies to --threat-model update only, got --threat-model {threat}{also}")
        check_clients_in_sum(request, threat)
        steps = 0
        if threat in ("update", "aggregate"):
            steps = target.cfg.train.local_epochs if request.local_steps is None else request.local_steps
            if steps < 1:
                raise ConfigError(f"Expected --local-steps >= 1, got {steps}")
        check_evaluator_images(request.evaluator_images)
        r = target.check_round(request.round)
        target.check_client(request.client)
        in_sum = 0
        if threat == "aggregate":
            in_sum = DEFAULT_CLIENTS_IN_SUM if request.clients_in_sum is None else request.clients_in_sum
            target.sum_clients(r, request.client, in_sum)  # a one-line error for a bad count or client
        batch_size = request.batch_size
        if batch_size < 1:
            raise ConfigError(f"Expected --batch-size >= 1, got {batch_size}")
        if self.needs_single_image and batch_size != 1:
            raise ConfigError(f"{self.label} reads the label of a single image: use --batch-size 1, got {batch_size}")
        n_images = request.images if request.images is not None else batch_size * 4
        if n_images < batch_size or n_images % batch_size:
            raise ConfigError(
                f"Expected --images to be a positive multiple of --batch-size {batch_size}, got {n_images}")
        iterations, restarts = self.iterations_and_restarts(request)
        return AttackSettings(self.name, threat, r, request.client, batch_size, n_images, iterations, request.seed,
                              restarts, steps, request.evaluator_images, params=parse_params(self, request.params),
                              clients_in_sum=in_sum)

    def evaluator_victims(self, target: Target, settings: AttackSettings) -> int | tuple[int, ...]:
        """Under ``aggregate``, every client in the sum (their images are all reconstructed)."""
        if settings.threat == "aggregate":
            clients = target.sum_clients(settings.round, settings.client, settings.clients_in_sum)
            return clients if len(clients) > 1 else clients[0]
        return settings.client

    def open(self, target: Target, settings: AttackSettings, cache: Path | None = None) -> None:
        """Raises :class:`~rvepfl.errors.NoAttackSurface` for a method without a gradient surface,
        and, under ``gradient`` and ``update``, for a run trained with secure aggregation (its
        server saw only each round's aggregate)."""
        if settings.threat in ("gradient", "update"):
            target.check_per_client_view()
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
        per_draw_rows = observed_batch(s)
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
                    rows = header_rows[: start_draw * per_draw_rows]
                    truth = list(saved["truth"][: start_draw * per_draw_rows])
                    recon = list(saved["reconstruction"][: start_draw * per_draw_rows])
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
        size = self.chunk_size(s)
        first = start_draw
        while first < draws:
            stop = min(draws, (first // size + 1) * size)  # the chunks lie on a grid: a resumed attack's are the same
            t0 = time.perf_counter()
            batches = [_draw_batches(target, s, draw) for draw in range(first, stop)]
            observations = [self._observe(target, s, parts, draw) for draw, parts in zip(range(first, stop), batches)]
            # The attack's own random draws (its initial guesses): a stream of its own for each observation.
            seeds = [derive_seed(s.seed, "attack", s.round, s.client, draw, 3) for draw in range(first, stop)]
            which = _observation_words(first, stop, draws)
            progress = tracker.progress(first * per_draw, lambda done, total, w=which: (  # type: ignore[misc]  # a lambda with a default
                f"{s.attack}: {w}, iteration {done}/{total}"))
            if self.batched_algorithm is None:
                results = [self.algorithm(observations[0], iterations=s.iterations, restarts=s.restarts, seed=seeds[0],
                                          progress=progress)]
            else:
                results = self.batched_algorithm(observations, iterations=s.iterations, restarts=s.restarts,
                                                 seeds=seeds, progress=progress)
            added = []
            for draw, parts, result in zip(range(first, stop), batches, results):
                gt = _joined_truth([truth_of for _, _, truth_of in parts])
                owners = [client for client, _, truth_of in parts for _ in truth_of.indices]
                pixels = to_pixels(result.inputs.detach().float().cpu(), target.dataset)
                # A gradient does not say which reconstruction is which image of the batch: match them
                # to the truth by the assignment of least total MSE (the identity at batch 1).
                order = match_to_truth(pixels, gt.pixels)
                pixels = pixels[order]
                attack_labels = result.labels[order] if result.labels is not None else None
                scores = image_scores(pixels, gt.pixels)
                labels = evaluator_labels(evaluator, pixels)
                for i in range(len(gt.indices)):
                    true_label = int(gt.labels[i])
                    added.append({
                        "image": gt.indices[i], "draw": draw, "round": s.round, "client": owners[i],
                        "label": true_label, "attack_label": int(attack_labels[i]) if attack_labels is not None else "",
                        "mse": float(scores["mse"][i]), "psnr": float(scores["psnr"][i]),
                        "ssim": float(scores["ssim"][i]), "evaluator_label": labels[i],
                        "evaluator_correct": "" if labels[i] == "" else int(labels[i] == true_label),
                    })
                truth.extend(gt.pixels)
                recon.extend(pixels)
            seconds = time.perf_counter() - t0
            for row in added:
                row["seconds"] = seconds / len(added)
            rows.extend(added)
            elapsed += seconds
            mean_psnr = np.mean([r["psnr"] for r in added])
            left = f"; {tracker.left(stop * per_draw)}" if stop < draws else ""
            batch = (f"{s.clients_in_sum} client{'s' if s.clients_in_sum != 1 else ''} x batch {s.batch_size}"
                     if s.threat == "aggregate" else f"batch {s.batch_size}")
            log(f"{s.attack}: {which} ({batch}): PSNR {mean_psnr:.1f} dB, {seconds:.1f} s{left}")
            # Commit: scores and reconstructions first, the summary (with the resume point) last.
            write_csv(out / "scores.csv", GRADIENT_COLUMNS, [[r[c] for c in GRADIENT_COLUMNS] for r in rows])
            save_tensors(recon_path, {"truth": torch.stack(truth), "reconstruction": torch.stack(recon)},
                         {"format": RECONSTRUCTIONS_KIND, "settings_digest": digest})
            partial = reconstruction_summary(target, s, rows, evaluator, "", elapsed, digest, status="running")
            partial["draws_done"] = stop
            write_json(summary_path, partial)
            first = stop
        if s.threat == "aggregate":
            titles = [f"c{r['client']} #{r['image']} y={r['label']}" for r in rows]
        else:
            titles = [f"#{r['image']} y={r['label']}" for r in rows]
        return rows, torch.stack(truth), torch.stack(recon), titles, elapsed

    @staticmethod
    def _observe(target: Target, s: AttackSettings, parts: list[tuple[int, torch.Tensor, GroundTruth]],
                 draw: int) -> GradientObservation:
        """What the server sees on observation ``draw``: of the victim's upload (``parts`` is its
        batch alone), or of the mean of the uploads of the clients in ``parts`` (``aggregate``)."""
        if s.threat == "aggregate":
            return target.observe_aggregate(s.round, [(c, x, gt.labels) for c, x, gt in parts],
                                            local_steps=s.local_steps, seed=s.seed, draw=draw)
        (_, x, gt), = parts
        if s.threat == "update":
            return target.observe_update(s.round, s.client, x, gt.labels, local_steps=s.local_steps, seed=s.seed,
                                         draw=draw)
        return target.observe_gradient(s.round, s.client, x, gt.labels, s.seed, draw)


def observed_batch(settings: AttackSettings) -> int:
    """The images in one observation: the batch size, times the clients in the sum under ``aggregate``.

    >>> observed_batch(AttackSettings("ig", "aggregate", 1, 0, 2, 4, 10, 0, clients_in_sum=5))
    10
    """
    return settings.batch_size * max(1, settings.clients_in_sum)


def _draw_batches(target: Target, s: AttackSettings, draw: int) -> list[tuple[int, torch.Tensor, GroundTruth]]:
    """Observation ``draw``'s batches, (client, images, truth) each: the victim's, and under
    ``aggregate`` those of the other clients in the sum after it, each drawn as an attack on that
    client alone would draw it."""
    clients = (target.sum_clients(s.round, s.client, s.clients_in_sum) if s.threat == "aggregate"
               else (s.client,))
    return [(c, *target.client_batch(c, s.batch_size, draw, s.seed)) for c in clients]


def _joined_truth(parts: list[GroundTruth]) -> GroundTruth:
    """The ground truths of several clients' batches as one, in order (indices within each
    client's own training split)."""
    if len(parts) == 1:
        return parts[0]
    return GroundTruth(torch.cat([p.pixels for p in parts]), torch.cat([p.labels for p in parts]),
                       tuple(i for p in parts for i in p.indices))


def _observation_words(first: int, stop: int, draws: int) -> str:
    """Observations ``first`` .. ``stop - 1`` of ``draws``, counted from 1.

    >>> _observation_words(3, 4, 10), _observation_words(0, 4, 10)
    ('observation 4/10', 'observations 1-4/10')
    """
    if stop - first == 1:
        return f"observation {first + 1}/{draws}"
    return f"observations {first + 1}-{stop}/{draws}"


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
