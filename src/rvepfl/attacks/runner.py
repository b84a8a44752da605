"""Run one attack against one run directory and write its scores, summary and image grid.

``rvepfl attack ATTACK --run RUN_DIR`` calls :func:`run_attack`. It writes into its output
directory (default ``RUN_DIR/attacks/<attack>-<threat>``):

- ``scores.csv``: one row per attacked image (gradient attacks) or per class (MI-Face);
- ``summary.json``: the settings, the threat model in words, mean ± std of every score, the
  evaluator's own test accuracy, the time taken;
- ``grid.png``: the ground truth (MI-Face: the class's mean real image) above each
  reconstruction;
- ``reconstructions.safetensors``: the reconstructions in [0, 1] pixel space.

Membership inference (``mia``, threat models ``released`` and ``stolen``) writes ``scores.csv``
(one row per evaluated image), ``summary.json`` and ``roc.png`` instead: see
:func:`rvepfl.attacks.mia_run.run_mia`.

Gradient attacks (threat model ``gradient``: one local step; ``update``: a client's whole local
round) process ``images / batch_size`` observations one after another; after each, the files are
rewritten atomically, so an interrupted attack resumes where it stopped when the same command is
run again. Every setting, the evaluator's image count included, is hashed into the summary: a
changed one starts the attack afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rvepfl.attacks.common import Tracker as _Tracker
from rvepfl.attacks.common import read_summary as _read_summary
from rvepfl.attacks.dlg import dlg, idlg
from rvepfl.attacks.inverting import inverting_gradients
from rvepfl.attacks.observation import Reconstruction
from rvepfl.attacks.scores import class_scores, image_scores, to_pixels
from rvepfl.attacks.threat import THREAT_MODELS, Target
from rvepfl.errors import CheckpointError, ConfigError
from rvepfl.io import (
    atomic_write_bytes,
    file_lock,
    load_tensors,
    save_tensors,
    write_csv,
    write_json,
)
from rvepfl.seeding import derive_seed

__all__ = ["ATTACK_NAMES", "DEFAULT_REFERENCES", "DEFAULT_THREAT", "GRADIENT_ATTACKS", "MIA_THREATS", "UPLOAD_THREATS",
           "AttackSettings", "attack_state", "run_attack"]

ATTACK_NAMES = ("dlg", "idlg", "ig", "miface", "mia")
UPLOAD_THREATS = ("gradient", "update")
"""The threat models the gradient attacks (dlg, idlg, ig) serve; miface and mia serve the others."""
MIA_THREATS = ("released", "stolen")
GRADIENT_ATTACKS: dict[str, Callable[..., Reconstruction]] = {"dlg": dlg, "idlg": idlg, "ig": inverting_gradients}
"""The gradient attacks by name (the CLI's ``rvepfl attack NAME``)."""
DEFAULT_THREAT = {"dlg": "gradient", "idlg": "gradient", "ig": "gradient", "miface": "released", "mia": "released"}
DEFAULT_REFERENCES = 4
"""Reference models of mia's LiRA (``--references``)."""
DEFAULT_ITERATIONS = {"dlg": 300, "idlg": 300, "ig": 1000, "miface": 1000}
MIN_EVALUATOR_IMAGES = 500
"""The fewest images an evaluator is trained on at all: held out (unused by every client), or,
when the run left fewer out, the images of the clients other than the attacked one."""
MIN_EVALUATOR_DRAW = 100
"""The smallest ``--evaluator-images``: the evaluator trains on 80 % of its images and is tested on
the other 20 %, so fewer leave it (and its reported accuracy) next to guessing; below 3 it cannot
be split at all."""
_KIND = "rvepfl-attack-reconstructions"


@dataclass(frozen=True)
class AttackSettings:
    """Everything that determines an attack's result (hashed to decide whether to resume)."""

    attack: str
    threat: str
    round: int
    client: int
    batch_size: int
    images: int
    iterations: int
    seed: int
    restarts: int = 1
    local_steps: int = 0
    """Local steps of the observed round (threat model ``update``; 0 otherwise)."""
    evaluator_images: int = 5000
    """Held-out images the evaluator may train on (it labels every reconstruction; 0 for mia,
    which has none)."""
    references: int = 0
    """mia: LiRA's reference models (0 for the other attacks). For mia, ``images`` is the number
    of members, and as many non-members are evaluated."""

    def digest(self) -> str:
        fields = asdict(self)
        if fields["references"] == 0:  # left out, so the digests of the attacks before mia stay as they were
            del fields["references"]
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_settings(target: Target, attack: str, *, threat: str | None, round_: int | None, client: int,
                     batch_size: int, images: int | None, iterations: int | None, seed: int,
                     restarts: int, local_steps: int | None = None,
                     evaluator_images: int = 5000, references: int | None = None) -> AttackSettings:
    """Validate the CLI's choices against the run; raise a one-line error for each bad one.

    ``local_steps`` (threat model ``update`` only) defaults to the run's ``train.local_epochs``:
    the steps a client holding only the attacked batch would take. ``references`` (mia only)
    defaults to :data:`DEFAULT_REFERENCES`.
    """
    if attack not in ATTACK_NAMES:
        raise ConfigError(f"Unknown attack {attack!r}: choose one of {', '.join(ATTACK_NAMES)}")
    threat = threat or DEFAULT_THREAT[attack]
    if threat not in THREAT_MODELS:
        raise ConfigError(f"Unknown threat model {threat!r}: choose one of {', '.join(THREAT_MODELS)}")
    if attack == "mia":
        if local_steps is not None:
            raise ConfigError(f"--local-steps applies to --threat-model update only, got mia (threat model {threat})")
        return _resolve_mia(target, threat, round_, client, images, iterations, seed, references)
    if references is not None:
        raise ConfigError(f"--references applies to mia only, got {attack}")
    if attack == "miface" and threat in UPLOAD_THREATS:
        raise ConfigError(f"miface inverts a model, not an upload: use --threat-model released or stolen, got {threat}")
    if attack != "miface" and threat not in UPLOAD_THREATS:
        raise ConfigError(f"{attack} inverts an observed upload: use --threat-model gradient (the default) or update, "
                          f"got {threat}")
    if threat != "update" and local_steps is not None:
        raise ConfigError(f"--local-steps applies to --threat-model update only, got --threat-model {threat}")
    steps = 0
    if threat == "update":
        steps = target.cfg.train.local_epochs if local_steps is None else local_steps
        if steps < 1:
            raise ConfigError(f"Expected --local-steps >= 1, got {steps}")
    if evaluator_images < MIN_EVALUATOR_DRAW:
        raise ConfigError(f"Expected --evaluator-images >= {MIN_EVALUATOR_DRAW} (the evaluator trains on 80 % of "
                          f"them and is tested on the other 20 %), got {evaluator_images}")
    r = target.check_round(round_)
    target.check_client(client)
    if batch_size < 1:
        raise ConfigError(f"Expected --batch-size >= 1, got {batch_size}")
    if attack == "idlg" and batch_size != 1:
        raise ConfigError(f"iDLG reads the label of a single image: use --batch-size 1, got {batch_size}")
    n_images = images if images is not None else (batch_size * 4 if attack != "miface" else target.num_classes)
    if attack != "miface" and (n_images < batch_size or n_images % batch_size):
        raise ConfigError(f"Expected --images to be a positive multiple of --batch-size {batch_size}, got {n_images}")
    its = iterations if iterations is not None else DEFAULT_ITERATIONS[attack]
    if its < 1:
        raise ConfigError(f"Expected --iterations >= 1, got {its}")
    if restarts < 1:
        raise ConfigError(f"Expected --restarts >= 1, got {restarts}")
    if attack == "miface":
        n_images = target.num_classes
    return AttackSettings(attack, threat, r, client, batch_size if attack != "miface" else 1, n_images, its,
                          seed, restarts if attack != "miface" else 1, steps, evaluator_images)


def _resolve_mia(target: Target, threat: str, round_: int | None, client: int, images: int | None,
                 iterations: int | None, seed: int, references: int | None) -> AttackSettings:
    """mia's settings: ``images`` members (default: all of the victim's training images), as
    many non-members, ``references`` reference models; checks that the run kept enough images
    out for the non-members and the reference models (:func:`rvepfl.attacks.mia_run.check_heldout`)."""
    from rvepfl.attacks.mia_run import check_heldout

    if threat not in MIA_THREATS:
        raise ConfigError(f"mia queries a model: use --threat-model released (the default) or stolen, got {threat}")
    if iterations is not None:
        raise ConfigError("mia trains its reference models for the run's own train.rounds x train.local_epochs "
                          "epochs: drop --iterations")
    k = DEFAULT_REFERENCES if references is None else references
    if k < 2:
        raise ConfigError(f"Expected --references >= 2 (LiRA fits a Gaussian to the reference models' "
                          f"confidences), got {k}")
    r = target.check_round(round_)
    target.check_client(client)
    n_train = len(target.fed.partition.clients[client].train)
    n = n_train if images is None else images
    if not 1 <= n <= n_train:
        raise ConfigError(f"Expected --images between 1 and {n_train} (client {client}'s training images, the "
                          f"members), got {n}")
    check_heldout(target, client, n)
    return AttackSettings("mia", threat, r, client, 1, n, 0, seed, evaluator_images=0, references=k)


# -- the evaluator -------------------------------------------------------------------------------
def load_or_train_evaluator(target: Target, max_images: int, log: Callable[[str], None],
                            cache: Path | None = None, *, victim: int | None = None) -> tuple[Any | None, str]:
    """The evaluator of ``target``'s data, trained once on up to ``max_images`` images no client
    has (a seeded draw) and cached in ``cache`` (default ``RUN/attacks/``) under a name made of
    a digest of those images, so runs with the same held-out images share it.

    When the run left fewer than :data:`MIN_EVALUATOR_IMAGES` images out (it used every image,
    as the README's main run does) and ``victim`` is given, the images are drawn instead from the
    clients other than ``victim`` (:meth:`Target.images_without`): the evaluator never sees the
    attacked client's images, so it never labels a reconstruction of an image it was trained on.
    That evaluator is cached as ``evaluator-without-client<victim>-...``. Otherwise (or with too
    few of those too): None and the reason.
    """
    from rvepfl.attacks.evaluator import Evaluator, train_evaluator
    from rvepfl.seeding import numpy_rng

    x, y = target.heldout()
    source, prefix = "images no client has", "evaluator"
    if len(y) < MIN_EVALUATOR_IMAGES:
        unused = len(y)
        reason = (f"no evaluator: the run left {unused} images of {target.dataset} unused by every client "
                  f"(needs >= {MIN_EVALUATOR_IMAGES})")
        if victim is None:
            return None, f"{reason}; train with data.subset to keep some out"
        x, y = target.images_without(victim)
        if len(y) < MIN_EVALUATOR_IMAGES:
            return None, (f"{reason}, and the clients other than client {victim} hold {len(y)}; train with "
                          "data.subset to keep some out")
        source = (f"images of the clients other than client {victim}, never client {victim}'s (the run left "
                  f"{unused} images unused by every client)")
        prefix = f"evaluator-without-client{victim}"
    n = min(len(y), max_images)
    pick = torch.from_numpy(np.sort(numpy_rng(target.cfg.seed, "attack", n).permutation(len(y))[:n]))
    x, y = x[pick], y[pick]
    digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:12]
    path = (cache or target.run.path / "attacks") / f"{prefix}-{target.dataset}-{n}-{digest}.safetensors"
    note = f"{path.name}: trained on {n} {source}"
    with file_lock(path):  # another attack process may be training the same one
        if path.is_file():
            return Evaluator.load(path), note
        log(f"training the evaluator on {n} {source}")
        evaluator = train_evaluator(x, y, num_classes=target.num_classes, seed=target.cfg.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        evaluator.save(path)
    return evaluator, note


def _stats(values: list[float]) -> dict[str, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(finite, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def _grid(path: Path, top: torch.Tensor, bottom: torch.Tensor, titles: list[str], caption: str) -> None:
    """A PNG: ``top`` images above ``bottom`` images, column titles, one caption."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(top)
    cols = min(n, 16)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.1 * cols + 0.6, 2.3 * rows + 0.5))
    FigureCanvasAgg(fig)
    for i in range(n):
        block, col = divmod(i, cols)
        for j, (images, label) in enumerate(((top, "truth"), (bottom, "attack"))):
            ax = fig.add_subplot(2 * rows, cols, (2 * block + j) * cols + col + 1)
            img = images[i].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
                      vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_title(titles[i], fontsize=7)
            if col == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(caption, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


# -- running -------------------------------------------------------------------------------------
GRADIENT_COLUMNS = ["image", "draw", "round", "client", "label", "attack_label", "mse", "psnr", "ssim",
                    "evaluator_label", "evaluator_correct", "seconds"]
MIFACE_COLUMNS = ["class", "iterations", "confidence", "mean_mse", "mean_psnr", "mean_ssim", "nearest_mse",
                  "nearest_psnr", "nearest_ssim", "evaluator_label", "evaluator_correct", "seconds"]


def attack_state(out: Path, settings: AttackSettings) -> str:
    """What :func:`run_attack` finds in ``out`` for ``settings``: ``complete`` (it skips the
    attack), ``resume`` (a stopped gradient attack it continues) or ``new``."""
    summary = _read_summary(out / "summary.json")
    if summary.get("settings_digest") != settings.digest():
        return "new"
    return {"complete": "complete", "running": "resume"}.get(str(summary.get("status")), "new")


def run_attack(target: Target, settings: AttackSettings, out: Path,
               log: Callable[[str], None] = lambda line: None, *,
               evaluator_cache: Path | None = None, status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``settings`` against ``target``; write (or complete) ``out``; return the summary.

    mia (membership inference) goes to :func:`rvepfl.attacks.mia_run.run_mia`, which caches its
    reference models in ``evaluator_cache`` too (beside the evaluators; default ``RUN/attacks/``).

    The evaluator trains on up to ``settings.evaluator_images`` held-out images (or, in a run
    that left too few out, images of the clients other than ``settings.client``: see
    :func:`load_or_train_evaluator`) and is cached in ``evaluator_cache`` (default ``RUN/attacks/``).
    A complete attack with these settings is skipped, unless it has no evaluator's labels and an
    evaluator can now be had (it was scored before that fallback existed): then it runs again.
    ``log`` receives a line per observation (gradient attacks) with the time left in the attack;
    ``status``, if given, an in-progress line every
    :data:`rvepfl.attacks.common.STATUS_EVERY` seconds while the attack
    iterates (the iteration, the time left), e.g. :meth:`rvepfl.progress.ProgressStream.status`.
    """
    if settings.attack == "mia":
        from rvepfl.attacks.mia_run import run_mia

        return run_mia(target, settings, out, log, cache=evaluator_cache, status=status)
    digest = settings.digest()
    previous = _read_summary(out / "summary.json")
    complete = previous.get("status") == "complete" and previous.get("settings_digest") == digest
    if complete and previous.get("evaluator_test_accuracy") is not None:
        log(f"{settings.attack}: complete with these settings, skipped ({out})")
        return previous
    evaluator, evaluator_note = load_or_train_evaluator(target, settings.evaluator_images, log, evaluator_cache,
                                                        victim=settings.client)
    if complete:
        if evaluator is None:
            log(f"{settings.attack}: complete with these settings, skipped ({out})")
            return previous
        log(f"{settings.attack}: complete but scored without an evaluator; again, with one ({out})")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if settings.attack == "miface":
        rows, truth, recon, titles = _run_miface(target, settings, evaluator, log, status)
        write_csv(out / "scores.csv", MIFACE_COLUMNS, [[r[c] for c in MIFACE_COLUMNS] for r in rows])
        save_tensors(out / "reconstructions.safetensors", {"truth": truth, "reconstruction": recon},
                     {"format": _KIND, "settings_digest": digest})
        seconds = time.perf_counter() - started
    else:
        rows, truth, recon, titles, seconds = _run_gradient(target, settings, evaluator, out, digest, log, status)
    threat = THREAT_MODELS[settings.threat]
    _grid(out / "grid.png", truth, recon, titles,
          f"{target.method.name} / {settings.attack} / {threat.name}: round {settings.round}, client {settings.client}")
    # The summary last: "complete" in it means every other file is written.
    summary = _summary(target, settings, rows, evaluator, evaluator_note, seconds, digest, status="complete")
    write_json(out / "summary.json", summary)
    return summary


def _summary(target: Target, settings: AttackSettings, rows: list[dict[str, Any]], evaluator: Any | None,
             evaluator_note: str, seconds: float, digest: str, *, status: str) -> dict[str, Any]:
    score_keys = [k for k in (rows[0] if rows else {}) if k.endswith(("mse", "psnr", "ssim", "confidence"))]
    scores = {k: _stats([r[k] for r in rows]) for k in score_keys}
    correct = [r["evaluator_correct"] for r in rows if r["evaluator_correct"] != ""]
    return {
        "status": status,
        "settings": asdict(settings),
        "settings_digest": digest,
        "run": str(target.run.path),
        "method": target.method.name,
        "dataset": target.dataset,
        "threat_model": asdict(THREAT_MODELS[settings.threat]),
        "rows": len(rows),
        "scores": scores,
        "evaluator_accuracy_on_attacks": (sum(correct) / len(correct)) if correct else None,
        "evaluator_test_accuracy": evaluator.accuracy if evaluator is not None else None,
        "evaluator": evaluator_note,
        "seconds": seconds,
        "pixel_space": "[0, 1]; model inputs are de-normalised with the data set's mean and std and clamped "
                       "(where the shared model reads a private encoder's sample z, the input is z, scored against x "
                       "the same way)",
    }


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


def _label(evaluator: Any | None, images: torch.Tensor) -> list[int | str]:
    if evaluator is None:
        return [""] * len(images)
    return [int(v) for v in evaluator.predict(images)]


def _run_gradient(target: Target, s: AttackSettings, evaluator: Any | None, out: Path, digest: str,
                  log: Callable[[str], None], status: Callable[[str], None] | None = None):
    attack = GRADIENT_ATTACKS[s.attack]
    draws = s.images // s.batch_size
    rows: list[dict[str, Any]] = []
    truth: list[torch.Tensor] = []
    recon: list[torch.Tensor] = []
    elapsed = 0.0
    start_draw = 0
    summary_path, recon_path = out / "summary.json", out / "reconstructions.safetensors"
    if summary_path.is_file() and recon_path.is_file():
        try:
            old = _read_summary(summary_path)
            if old.get("settings_digest") == digest and old.get("status") == "running":
                saved = load_tensors(recon_path, kind=_KIND)
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
    tracker = _Tracker(draws * per_draw, status)
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
        result = attack(obs, iterations=s.iterations, restarts=s.restarts, seed=attack_seed, progress=progress)
        pixels = to_pixels(result.inputs.detach().float().cpu(), target.dataset)
        # A gradient does not say which reconstruction is which image of the batch: match them
        # to the truth by the assignment of least total MSE (the identity at batch 1).
        order = match_to_truth(pixels, gt.pixels)
        pixels = pixels[order]
        attack_labels = result.labels[order] if result.labels is not None else None
        scores = image_scores(pixels, gt.pixels)
        labels = _label(evaluator, pixels)
        per = (time.perf_counter() - t0) / s.batch_size
        for i in range(s.batch_size):
            true_label = int(gt.labels[i])
            rows.append({
                "image": gt.indices[i], "draw": draw, "round": s.round, "client": s.client,
                "label": true_label, "attack_label": int(attack_labels[i]) if attack_labels is not None else "",
                "mse": float(scores["mse"][i]), "psnr": float(scores["psnr"][i]), "ssim": float(scores["ssim"][i]),
                "evaluator_label": labels[i],
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
                     {"format": _KIND, "settings_digest": digest})
        partial = _summary(target, s, rows, evaluator, "", elapsed, digest, status="running")
        partial["draws_done"] = draw + 1
        write_json(summary_path, partial)
    titles = [f"#{r['image']} y={r['label']}" for r in rows]
    return rows, torch.stack(truth), torch.stack(recon), titles, elapsed


def _read_rows(path: Path) -> list[dict[str, Any]]:
    from rvepfl.io import read_csv_rows

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


def _run_miface(target: Target, s: AttackSettings, evaluator: Any | None, log: Callable[[str], None],
                status: Callable[[str], None] | None = None):
    from rvepfl.attacks.miface import mi_face

    model, bounds = target.inversion_model(s.threat, s.round, s.client)
    log(f"miface: {target.num_classes} classes, up to {s.iterations} iterations ({s.threat} model)")
    # Classes stop early, so the time left is an upper bound.
    progress = _Tracker(s.iterations, status).progress(0, lambda done, total: f"miface: iteration {done} of up to {total}")
    result = mi_face(model, target.num_classes, target.input_shape, max_iter=s.iterations, bounds=bounds,
                    seed=s.seed, progress=progress)  # the seed also drives a private encoder's sampled z
    pixels = to_pixels(result.images.detach().float().cpu(), target.dataset)
    # The class's real images: every client's training images (stolen: the victim client's).
    if s.threat == "stolen":
        data = target.fed.client_data(s.client)
        real_x, real_y = data.train_x.cpu(), data.train_y.cpu()
    else:
        idx = np.concatenate([c.train for c in target.fed.partition.clients])
        t = torch.from_numpy(idx)
        real_x, real_y = target.fed.pool_x.cpu()[t], target.fed.pool_y.cpu()[t]
    real = to_pixels(real_x.clone(), target.dataset)
    classes = torch.as_tensor(result.classes)
    scores = class_scores(pixels, classes, real, real_y)
    labels = _label(evaluator, pixels)
    rows = []
    means = []
    for i, c in enumerate(classes.tolist()):
        rows.append({
            "class": c, "iterations": int(result.iterations[i]), "confidence": float(result.confidences[i]),
            "mean_mse": float(scores["mean_mse"][i]), "mean_psnr": float(scores["mean_psnr"][i]),
            "mean_ssim": float(scores["mean_ssim"][i]), "nearest_mse": float(scores["nearest_mse"][i]),
            "nearest_psnr": float(scores["nearest_psnr"][i]), "nearest_ssim": float(scores["nearest_ssim"][i]),
            "evaluator_label": labels[i], "evaluator_correct": "" if labels[i] == "" else int(labels[i] == c),
            "seconds": float(result.seconds) / len(classes),
        })
        means.append(real[real_y == c].mean(0) if bool((real_y == c).any()) else torch.zeros_like(pixels[i]))
    return rows, torch.stack(means), pixels, [f"class {r['class']}" for r in rows]
