"""Membership inference against a run directory: ``rvepfl attack mia`` (:func:`run_mia`).

The maths (the two attacks, the metrics, the reference models) is in :mod:`rvepfl.attacks.mia`;
this module picks the images, the attacked model and the reference models' data from a
:class:`~rvepfl.attacks.threat.Target` and writes the results.

- **Members**: the victim client's training images (``settings.images`` of them, a seeded draw
  when fewer than all).
- **Non-members**: as many images no client has (:meth:`Target.heldout`; same data set and
  distribution), a seeded draw.
- **Reference models** (LiRA): ``settings.references`` models of the run's architecture
  (``target.method.build_model()``), each trained centrally on its own seeded draw of as many
  images as the victim trains on, from the images no client has *less the non-members*, so no
  reference model ever saw an evaluated image. The recipe follows the victim's: cross-entropy
  and Adam at the run's ``train.lr`` and ``train.batch_size``, for ``train.rounds x
  train.local_epochs`` epochs (the passes the victim's data got in federated training).
- **The attacked model** (:meth:`Target.image_model`): ``stolen``, the victim's full
  personal model; ``released``, the global shared model, fed by the initial encoder where the
  method has a private one.

Outputs in ``out``: ``scores.csv`` (one row per evaluated image, members first; a stolen
model's rows start with its ``client``), ``roc.png`` (both attacks' ROC curves on log-log axes)
and ``summary.json`` last, each written atomically.

**Several clients** (threat model ``stolen``, ``--client all``): each client's job in turn
(:meth:`rvepfl.attacks.base.Attack.run_clients`), in ``OUT/clients/<cccc>/``: that client's
training images (members) and as many images no client has (non-members) scored against that
client's personal model, the reference models drawn as for that client alone (so clients of the
same training-set size share them, from the cache). Then one ``scores.csv`` of every client's
rows, whose members and non-members are pooled into one ROC (the summary's ``metrics``; LiRA's
score is calibrated image by image against the reference models, so scores of different clients'
models compare), each client's own under ``clients``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rvepfl.attacks.base import (
    Attack,
    AttackRequest,
    AttackSettings,
    Log,
    check_clients_in_sum,
    parse_params,
    pooled_rows,
)
from rvepfl.attacks.common import Tracker as _Tracker
from rvepfl.attacks.mia import (
    LIRA_VARIANCES,
    lira_offline,
    load_or_train_reference,
    logit_confidence,
    loss_scores,
    membership_metrics,
    model_logits,
    roc_curve,
)
from rvepfl.attacks.threat import THREAT_MODELS, Target
from rvepfl.data.datasets import NORMALISATION
from rvepfl.errors import ConfigError
from rvepfl.io import atomic_write_bytes, write_csv, write_json
from rvepfl.seeding import derive_seed, numpy_rng

__all__ = ["DEFAULT_REFERENCES", "MIA_COLUMNS", "MembershipInference", "MiaImages", "check_heldout", "mia_images",
           "run_mia"]

DEFAULT_REFERENCES = 4
"""Reference models of mia's LiRA (``--references``)."""

MIA_COLUMNS = ["image", "member", "label", "loss", "loss_score", "phi", "lira_mean", "lira_std", "lira_score"]
"""``scores.csv``'s columns (after ``client``, under threat model ``stolen``). ``image``: the
image's position in the victim's training split (members) or in :meth:`Target.heldout`
(non-members); ``loss``: the attacked model's cross-entropy; ``loss_score = -loss``; ``phi``: its
logit-scaled confidence; ``lira_mean`` and ``lira_std``: the reference models' Gaussian of ``phi``;
``lira_score``: LiRA's score."""
VARIANCE = LIRA_VARIANCES[0]
"""LiRA's variance: global (one for every image), as the paper advises for few reference models."""
_MIA = 9300  # mia's key within the "attack" stream of its seed


@dataclass(frozen=True)
class MiaImages:
    """The evaluated images (normalised, members first) and the reference models' pool."""

    x: torch.Tensor
    y: torch.Tensor
    member: torch.Tensor
    """(2N,) bool."""
    index: tuple[int, ...]
    """Position of each image in the victim's training split (members) or in ``Target.heldout()``."""
    pool: np.ndarray
    """Positions in ``Target.heldout()`` of the images the reference models draw from."""
    reference_size: int
    """Images each reference model trains on: the victim's training-set size."""


def _normalise(pixels: torch.Tensor, dataset: str) -> torch.Tensor:
    """[0, 1] pixels as the clients' inputs are (the data set's mean and std, in the same order
    of operations as :func:`rvepfl.data.datasets.to_tensor`)."""
    mean, std = NORMALISATION[dataset]
    return pixels.sub(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1)).contiguous()


def check_heldout(target: Target, client: int, members: int) -> None:
    """Raise a one-line :class:`ConfigError` unless the run kept out enough images for
    ``members`` non-members and a reference model's training set (the victim's training-set size)."""
    n_train = len(target.fed.partition.clients[client].train)
    kept = len(target.heldout()[1])
    if kept == 0:
        raise ConfigError("mia needs images no client has (the non-members, and the reference models' training "
                          "images), and the run kept none out: train with data.subset so that some exist")
    if kept < members + n_train:
        raise ConfigError(f"mia needs {members + n_train} images no client has ({members} non-members, as many as "
                          f"--images, and {n_train} to train each reference model on, client {client}'s training-set "
                          f"size), and the run kept {kept} out: lower --images, or train with a smaller data.subset")


def mia_images(target: Target, client: int, members: int, seed: int) -> MiaImages:
    """``members`` of ``client``'s training images (all of them, or a seeded draw), as many
    images no client has (a seeded draw), and the rest of those as the reference models' pool."""
    check_heldout(target, client, members)
    data = target.fed.client_data(client)
    train_x, train_y = data.train_x.cpu(), data.train_y.cpu()
    n_train = len(train_y)
    pick = np.arange(n_train)
    if members < n_train:
        pick = np.sort(numpy_rng(seed, "attack", _MIA, client, 0).choice(n_train, size=members, replace=False))
    heldout_x, heldout_y = target.heldout()
    order = numpy_rng(seed, "attack", _MIA, 1).permutation(len(heldout_y))
    outside, pool = np.sort(order[:members]), np.sort(order[members:])
    t_in, t_out = torch.from_numpy(pick), torch.from_numpy(outside)
    x = torch.cat([train_x[t_in], _normalise(heldout_x[t_out], target.dataset)])
    y = torch.cat([train_y[t_in], heldout_y[t_out]]).long()
    member = torch.cat([torch.ones(members, dtype=torch.bool), torch.zeros(members, dtype=torch.bool)])
    index = tuple(int(i) for i in np.concatenate([pick, outside]))
    return MiaImages(x, y, member, index, pool, n_train)


def _reference_data(target: Target, images: MiaImages, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference model ``k``'s training images: a seeded draw from the pool (never an evaluated image)."""
    rng = numpy_rng(seed, "attack", _MIA, 2, k)
    pick = np.sort(images.pool[rng.choice(len(images.pool), size=images.reference_size, replace=False)])
    x, y = target.heldout()
    t = torch.from_numpy(pick)
    return _normalise(x[t], target.dataset), y[t].long()


def run_mia(target: Target, settings: AttackSettings, out: Path, log: Callable[[str], None] = lambda line: None, *,
            cache: Path | None = None, status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run membership inference against ``target``; write ``out``;
    return the summary. A complete attack with the same settings is skipped.

    The reference models are cached in ``cache`` (default ``RUN/attacks/``), shared by every
    attack with the same architecture, images, recipe and seed. ``log`` gets a line per
    reference model; ``status``, if given, an in-progress line (epoch, time left) while one trains.
    """

    s = settings
    digest = s.digest()
    previous = MembershipInference().previous(out, digest)
    if previous is not None:
        log(f"mia: complete with these settings, skipped ({out})")
        return previous
    started = time.perf_counter()
    images = mia_images(target, s.client, s.images, s.seed)
    model = target.image_model(s.threat, s.round, s.client)
    logits = model_logits(model, images.x, seed=derive_seed(s.seed, "attack", _MIA, 4))
    loss = -loss_scores(logits, images.y)
    phi = logit_confidence(logits, images.y)

    t = target.cfg.train
    epochs = t.rounds * t.local_epochs
    cache = cache or target.run.path / "attacks"
    log(f"mia: {s.images} members (client {s.client}'s training images), {s.images} non-members; LiRA with "
        f"{s.references} reference models, each {epochs} epochs on {images.reference_size} images no client has")
    tracker = _Tracker(s.references * epochs, status)
    reference_phi, files, trained_seconds = [], [], []
    for k in range(s.references):
        t0 = time.perf_counter()
        x_ref, y_ref = _reference_data(target, images, k, s.seed)
        progress = tracker.progress(k * epochs, lambda done, total, k=k: (  # type: ignore[misc]  # a lambda with a default
            f"mia: reference model {k + 1}/{s.references}, epoch {done}/{total}"))
        reference, path, cached = load_or_train_reference(
            target.method.build_model, x_ref, y_ref, dataset=target.dataset, epochs=epochs, lr=t.lr,
            batch_size=t.batch_size, seed=derive_seed(s.seed, "attack", _MIA, 3, k), cache=cache, progress=progress)
        files.append(path.name)
        ref_logits = model_logits(reference, images.x, seed=derive_seed(s.seed, "attack", _MIA, 5, k))
        reference_phi.append(logit_confidence(ref_logits, images.y))
        seconds = time.perf_counter() - t0
        if not cached:
            trained_seconds.append(seconds)
        left = f"; {tracker.left((k + 1) * epochs)}" if k + 1 < s.references and not cached else ""
        how = "read from the cache" if cached else f"trained in {seconds:.1f} s"
        log(f"mia: reference model {k + 1}/{s.references} {how} ({path.name}){left}")
    lira = lira_offline(phi.numpy(), torch.stack(reference_phi).numpy(), variance=VARIANCE)

    member = images.member.numpy()
    loss_score = -loss.numpy()
    metrics = {"loss": membership_metrics(loss_score, member), "lira": membership_metrics(lira.scores, member)}
    first = [s.client] if s.threat == "stolen" else []
    rows = [[*first, images.index[i], int(member[i]), int(images.y[i]), float(loss[i]), float(loss_score[i]),
             float(phi[i]), float(lira.mean[i]), float(lira.std[i]), float(lira.scores[i])] for i in range(len(member))]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "scores.csv", [*(["client"] if first else []), *MIA_COLUMNS], rows)
    caption = (f"{target.method.name} / mia / {s.threat}: round {s.round}, client {s.client}, "
               f"{s.images} members, {s.images} non-members")
    _roc_png(out / "roc.png", {"loss": loss_score, "LiRA (offline)": lira.scores}, member, metrics, caption)
    summary = {
        "status": "complete",
        "settings": asdict(s),
        "settings_digest": digest,
        "run": str(target.run.path),
        "method": target.method.name,
        "dataset": target.dataset,
        "threat_model": asdict(THREAT_MODELS[s.threat]),
        "attacker_model": target.image_model_words(s.threat, s.round),
        "members": f"{s.images} of client {s.client}'s {images.reference_size} training images",
        "nonmembers": f"{s.images} images no client has (of the {len(target.heldout()[1])} the run kept out)",
        "rows": len(rows),
        "metrics": metrics,
        "references": {
            "count": s.references, "epochs": epochs, "lr": t.lr, "batch_size": t.batch_size,
            "images_each": images.reference_size, "pool": len(images.pool), "variance": VARIANCE,
            "trained": len(trained_seconds), "cached": s.references - len(trained_seconds),
            "seconds_per_trained": (sum(trained_seconds) / len(trained_seconds)) if trained_seconds else None,
            "cache": str(cache), "files": files,
        },
        "seconds": time.perf_counter() - started,
    }
    # The summary last: "complete" in it means every other file is written.
    write_json(out / "summary.json", summary)
    return summary


def _roc_png(path: Path, curves: dict[str, np.ndarray], member: np.ndarray, metrics: dict[str, dict[str, Any]],
             caption: str) -> None:
    """Each attack's ROC on log-log axes with the chance diagonal; a rate of 0, which a log axis
    cannot show, is drawn at half the smallest nonzero one (1 / (2 n))."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_out, n_in = int((~member.astype(bool)).sum()), int(member.astype(bool).sum())
    low_x, low_y = 0.5 / n_out, 0.5 / n_in
    fig = Figure(figsize=(4.8, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for (name, scores), m in zip(curves.items(), metrics.values()):
        fpr, tpr, _ = roc_curve(scores, member)
        ax.plot(np.maximum(fpr, low_x), np.maximum(tpr, low_y),
                label=f"{name}: AUC {m['auc']:.3f}, TPR {100 * m['tpr_at_1pct_fpr']:.1f} % at 1 % FPR")
    low = min(low_x, low_y)
    ax.plot([low, 1], [low, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low_x, 1)
    ax.set_ylim(low_y, 1.05)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(caption, fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


class MembershipInference(Attack):
    """``rvepfl attack mia``: were these images in the victim's training set? (:func:`run_mia`)"""

    name = "mia"
    label = "Membership inference (LiRA)"
    description = ("loss threshold (Yeom et al., 2018) and offline LiRA (Carlini et al., S&P 2022) on the victim's "
                   "training images against as many images no client has")
    rank = 60
    threats = ("released", "stolen")
    surface = "queries a model"
    membership = True
    several_clients = True
    audit_options = ("references", "evaluator_images")
    success_label = "ROC AUC"
    files = "scores.csv, summary.json, roc.png"

    def resolve(self, target: Target, request: AttackRequest) -> AttackSettings:
        """mia's settings: ``images`` members (default: all of the victim's training images), as
        many non-members, ``references`` reference models; checks that the run kept enough images
        out for the non-members and the reference models (:func:`check_heldout`). On several
        clients, ``images`` members of each (0, the default: all of each client's)."""
        if request.local_steps is not None:
            raise ConfigError(f"--local-steps applies to --threat-model update only, got mia (threat model "
                              f"{request.threat or self.threats[0]})")
        threat = self.check_threat(request.threat)
        check_clients_in_sum(request, threat)
        if request.iterations is not None:
            raise ConfigError("mia trains its reference models for the run's own train.rounds x train.local_epochs "
                              "epochs: drop --iterations")
        if request.restarts is not None:
            raise ConfigError("mia takes no --restarts (`rvepfl attacks` lists the attacks that do): drop it")
        k = DEFAULT_REFERENCES if request.references is None else request.references
        if k < 2:
            raise ConfigError(f"Expected --references >= 2 (LiRA fits a Gaussian to the reference models' "
                              f"confidences), got {k}")
        r = target.check_round(request.round)
        victims = self.victims(target, request)
        for client in victims:
            n_train = len(target.fed.partition.clients[client].train)
            n = n_train if request.images is None else request.images
            if not 1 <= n <= n_train:
                raise ConfigError(f"Expected --images between 1 and {n_train} (client {client}'s training images, the "
                                  f"members), got {n}")
            check_heldout(target, client, n)
        if len(victims) > 1 and request.images is None:
            n = 0  # all of each client's training images
        return AttackSettings(self.name, threat, r, victims[0], 1, n, 0, request.seed, evaluator_images=0, references=k,
                              params=parse_params(self, request.params), clients=victims if len(victims) > 1 else ())

    def client_settings(self, target: Target, settings: AttackSettings, client: int) -> AttackSettings:
        """Client ``client``'s job: ``images`` of its members (0: all its training images)."""
        n = settings.images or len(target.fed.partition.clients[client].train)
        return replace(settings, client=client, clients=(), images=n)

    def open(self, target: Target, settings: AttackSettings, cache: Path | None = None) -> None:
        for client in settings.victims:
            target.image_model(settings.threat, settings.round, client)

    def run(self, target: Target, settings: AttackSettings, out: Path, log: Log, *,
            cache: Path | None = None, status: Log | None = None) -> dict[str, Any]:
        if settings.clients:
            return self.run_clients(target, settings, out, log, cache=cache, status=status)
        return run_mia(target, settings, out, log, cache=cache, status=status)

    def pool(self, target: Target, settings: AttackSettings, parts: list[tuple[int, Path, dict[str, Any]]],
             out: Path) -> dict[str, Any]:
        """One ``scores.csv`` of every client's rows (as each client's job wrote them), their
        pooled ROC (``roc.png``, the summary's ``metrics``) and each client's metrics under
        ``clients``; the summary last."""
        s = settings
        header, raw, rows = pooled_rows(parts)
        write_csv(out / "scores.csv", header, raw)
        member = np.array([r["member"] for r in rows]) == 1
        scores = {"loss": np.array([float(r["loss_score"]) for r in rows]),
                  "lira": np.array([float(r["lira_score"]) for r in rows])}
        metrics = {key: membership_metrics(values, member) for key, values in scores.items()}
        clients = ", ".join(map(str, s.clients))
        _roc_png(out / "roc.png", {"loss": scores["loss"], "LiRA (offline)": scores["lira"]}, member, metrics,
                 f"{target.method.name} / mia / {s.threat}: round {s.round}, clients {clients}, "
                 f"{int(member.sum())} members, {int((~member).sum())} non-members")
        summaries = [summary for _client, _where, summary in parts]
        references = dict(summaries[0]["references"])
        references["trained"] = sum(p["references"]["trained"] for p in summaries)
        references["cached"] = sum(p["references"]["cached"] for p in summaries)
        references["files"] = list(dict.fromkeys(f for p in summaries for f in p["references"]["files"]))
        references.pop("seconds_per_trained", None)
        summary = {
            "status": "complete",
            "settings": asdict(s),
            "settings_digest": s.digest(),
            "run": str(target.run.path),
            "method": target.method.name,
            "dataset": target.dataset,
            "threat_model": asdict(THREAT_MODELS[s.threat]),
            "attacker_model": summaries[0]["attacker_model"],
            "members": f"{int(member.sum())} training images of clients {clients}, each scored against its own "
                       "client's model",
            "nonmembers": f"{int((~member).sum())} images no client has, as many per client as its members, scored "
                          "against that client's model",
            "rows": len(rows),
            "metrics": metrics,
            "clients": {str(client): {"rows": part["rows"], "members": part["members"], "metrics": part["metrics"],
                                      "seconds": part["seconds"], "folder": str(where.relative_to(out))}
                        for client, where, part in parts},
            "references": references,
            "seconds": sum(float(p["seconds"]) for p in summaries),
        }
        # The summary last: "complete" in it means every other file is written.
        write_json(out / "summary.json", summary)
        return summary

    def report(self, summary: dict[str, Any]) -> list[str]:
        return [f"{key:>5}: AUC {m['auc']:.3f}, TPR {100 * m['tpr_at_0.1pct_fpr']:.1f} % at 0.1 % FPR, "
                f"{100 * m['tpr_at_1pct_fpr']:.1f} % at 1 % FPR, balanced accuracy "
                f"{100 * m['balanced_accuracy']:.1f} % ({m['n_members']} members, {m['n_nonmembers']} non-members)"
                for key, m in summary["metrics"].items()]

    def audit_scores(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Each attack's ROC AUC, TPR at 0.1 % and 1 % FPR and balanced accuracy."""
        return {f"{key}_{attack}": value for attack, values in summary["metrics"].items()
                for key, value in values.items() if not key.startswith("n_")}

    def panel_title(self, threat: str) -> str:
        return f"{self.label}, {threat} model"
