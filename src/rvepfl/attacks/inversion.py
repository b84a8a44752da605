"""The family of model-inversion attacks: threat models ``released`` and ``stolen``, one image per
class, scored against the class's real training images.

A member of the family says which model it inverts (:meth:`InversionAttack.victim`) and how
(:meth:`InversionAttack.invert`, returning an :class:`Inversion`), and inherits the rest: the
evaluator's labels, MSE, PSNR and SSIM against the class's mean and nearest real training image
(every client's training images for a released model, the victim's for a stolen one),
``scores.csv`` (one row per class; a stolen model's rows start with its ``client``),
``reconstructions.safetensors``, ``grid.png`` (the class's mean real image above each inverted
one) and ``summary.json`` last.

Under ``stolen`` a job may attack several clients' personal models (``--client all``): each
client's job in ``OUT/clients/<cccc>/``, then one ``scores.csv`` of classes x clients rows, one
grid (a row per client) and the summary's pooled scores, with each client's under ``clients``
(:meth:`rvepfl.attacks.base.Attack.run_clients`).

Clients that hold the same model are inverted once. A method without a private part gives every
client the same global model, and an inversion depends on the model, the settings other than the
client, the evaluator and (GMI) the prior alone, so a job over its clients would find the same
images once per client. Now a client whose model is the same, byte for byte, as the client just
inverted (:func:`model_digest`, with everything else the inversion reads:
:meth:`InversionAttack.inversion_key`) takes that inversion: the same images and columns as
inverting it again, scored against its own images, its ``seconds`` the time it took (none), its
summary naming the client it shares the model with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from rvepfl.attacks.base import (
    Attack,
    AttackRequest,
    AttackSettings,
    Log,
    check_clients_in_sum,
    check_evaluator_images,
    evaluator_labels,
    image_grid,
    parse_params,
    pooled_rows,
    reconstruction_summary,
    stats,
)
from rvepfl.attacks.scores import class_scores, to_pixels
from rvepfl.attacks.threat import Target
from rvepfl.errors import ConfigError
from rvepfl.io import load_tensors, save_tensors, write_csv, write_json

__all__ = ["SCORE_COLUMNS", "Inversion", "InversionAttack", "model_digest", "pooled_share"]

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


def model_digest(model: nn.Module) -> str:
    """A digest of everything in ``model`` that its outputs can depend on: its modules' classes
    and plain settings (e.g. a personal model's ``sample_at_eval``), and every parameter's and
    buffer's name, dtype, shape and bytes. Two models with the same digest compute the same
    function (with the same random draws, for one that samples).

    >>> a, b = nn.Linear(2, 3), nn.Linear(2, 3)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> model_digest(a) == model_digest(b), model_digest(a) == model_digest(nn.Linear(2, 3))
    (True, False)
    """
    h = hashlib.sha256()
    for name, module in model.named_modules():
        plain = {k: v for k, v in sorted(vars(module).items())
                 if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, tuple))}
        h.update(f"{name}:{type(module).__module__}.{type(module).__qualname__}:{plain!r};".encode())
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class InversionAttack(Attack):
    """An attack that inverts a released or stolen model into one image per class."""

    threats = ("released", "stolen")
    surface = "inverts a model, not an upload"
    success_label = "classes recognised (%)"
    audit_options = ("iterations", "restarts", "evaluator_images")
    scores_psnr = "nearest_psnr"
    scores_ssim = "nearest_ssim"
    several_clients = True
    own_columns: ClassVar[tuple[str, ...]] = ()
    """The member's columns of ``scores.csv``, after ``class`` (``Inversion.columns``' keys)."""

    _last: ClassVar[dict[str, tuple[tuple[Any, ...], int, Inversion]]] = {}
    """Per attack, in this process: the last inversion, its :meth:`inversion_key` and client."""

    def invert(self, target: Target, settings: AttackSettings, log: Log, status: Log | None, *,
               evaluator: Any | None, cache: Path) -> Inversion:
        """The attack proper."""
        raise NotImplementedError

    def inverted_model(self, target: Target, settings: AttackSettings) -> nn.Module:
        """The model :meth:`invert` inverts under ``settings``."""
        raise NotImplementedError

    def inversion_key(self, target: Target, settings: AttackSettings, evaluator_note: str,
                      cache: Path) -> tuple[Any, ...]:
        """Everything :meth:`invert`'s result depends on: the inverted model's :func:`model_digest`,
        the settings other than the client and the evaluator (its file); a member that reads
        more (GMI: its prior) adds it. Two clients with the same key get the same inversion."""
        return (self.name, model_digest(self.inverted_model(target, settings)),
                dataclasses.replace(settings, client=0).digest(), evaluator_note)

    def invert_once(self, target: Target, settings: AttackSettings, log: Log, status: Log | None, *,
                    evaluator: Any | None, evaluator_note: str, cache: Path) -> Inversion:
        """:meth:`invert`, or the inversion of the client just inverted in this process when its
        :meth:`inversion_key` is this one's (the same model, byte for byte, and settings):
        then the same images and columns, in no time, and the summary says whose they are."""
        key = self.inversion_key(target, settings, evaluator_note, cache)
        last = InversionAttack._last.get(self.name)
        if last is not None and last[0] == key and last[1] != settings.client:
            log(f"{self.name}: client {settings.client}'s model is client {last[1]}'s, byte for byte: its "
                "inversion is the same, taken as it is")
            return dataclasses.replace(last[2], seconds=0.0,
                                       extra={**last[2].extra, "same_model_as_client": last[1]})
        result = self.invert(target, settings, log, status, evaluator=evaluator, cache=cache)
        InversionAttack._last[self.name] = (key, settings.client, result)
        return result

    def columns(self, threat: str) -> list[str]:
        """``scores.csv``'s columns under ``threat``: a stolen model's rows start with its client."""
        return [*(["client"] if threat == "stolen" else []), "class", *self.own_columns, *SCORE_COLUMNS, "seconds"]

    def pooled_extra(self, summaries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The member's own summary entries (``Inversion.extra``) of a job on several clients,
        from its clients' ``summaries`` and the pooled ``rows`` (default: none)."""
        return {}

    def resolve(self, target: Target, request: AttackRequest) -> AttackSettings:
        threat = self.check_threat(request.threat)
        if request.references is not None:
            raise ConfigError(f"--references applies to mia only, got {self.name}")
        if request.local_steps is not None:
            raise ConfigError(f"--local-steps applies to --threat-model update only, got --threat-model {threat}")
        check_clients_in_sum(request, threat)
        check_evaluator_images(request.evaluator_images)
        r = target.check_round(request.round)
        victims = self.victims(target, request)
        if request.batch_size < 1:
            raise ConfigError(f"Expected --batch-size >= 1, got {request.batch_size}")
        iterations, restarts = self.iterations_and_restarts(request)
        return AttackSettings(self.name, threat, r, victims[0], 1, target.num_classes, iterations, request.seed,
                              restarts, 0, request.evaluator_images, params=parse_params(self, request.params),
                              clients=victims if len(victims) > 1 else ())

    def panel_title(self, threat: str) -> str:
        return f"{self.label}, {threat} model"

    def run(self, target: Target, settings: AttackSettings, out: Path, log: Log, *,
            cache: Path | None = None, status: Log | None = None) -> dict[str, Any]:
        """Invert, score against the class's real images, write ``out`` (see the module doc).

        A complete attack with these settings is skipped, unless it has no evaluator's labels and
        an evaluator can now be had: then it runs again. A job on several clients runs each
        client's in turn (:meth:`run_clients`).
        """
        s = settings
        cache = cache or target.run.path / "attacks"
        if s.clients:
            return self.run_clients(target, s, out, log, cache=cache, status=status)
        done, evaluator, evaluator_note = self.evaluator_unless_done(target, s, out, log, cache)
        if done is not None:
            return done
        digest = s.digest()
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        result = self.invert_once(target, s, log, status, evaluator=evaluator, evaluator_note=evaluator_note,
                                  cache=cache)
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
                "client": s.client, "class": c, **{k: result.columns[k][i] for k in self.own_columns},
                "mean_mse": float(scores["mean_mse"][i]), "mean_psnr": float(scores["mean_psnr"][i]),
                "mean_ssim": float(scores["mean_ssim"][i]), "nearest_mse": float(scores["nearest_mse"][i]),
                "nearest_psnr": float(scores["nearest_psnr"][i]), "nearest_ssim": float(scores["nearest_ssim"][i]),
                "evaluator_label": labels[i], "evaluator_correct": "" if labels[i] == "" else int(labels[i] == c),
                "seconds": float(result.seconds) / len(classes),
            })
            means.append(real[real_y == c].mean(0) if bool((real_y == c).any()) else torch.zeros_like(pixels[i]))
        columns = self.columns(s.threat)
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

    def pool(self, target: Target, settings: AttackSettings, parts: list[tuple[int, Path, dict[str, Any]]],
             out: Path) -> dict[str, Any]:
        """One ``scores.csv`` of every client's rows (as each client's job wrote them), the
        reconstructions and a grid of a row per client, and the summary: the pooled scores (the
        evaluator's test accuracy: the mean of the clients' evaluators'), each client's under
        ``clients``, the member's own entries (:meth:`pooled_extra`), the summary last."""
        s = settings
        digest = s.digest()
        header, raw, rows = pooled_rows(parts)
        write_csv(out / "scores.csv", header, raw)
        truth, pixels = [], []
        for _client, where, _summary in parts:
            saved = load_tensors(where / "reconstructions.safetensors", kind=_KIND)
            truth.append(saved["truth"])
            pixels.append(saved["reconstruction"])
        save_tensors(out / "reconstructions.safetensors",
                     {"truth": torch.cat(truth), "reconstruction": torch.cat(pixels)},
                     {"format": _KIND, "settings_digest": digest})
        image_grid(out / "grid.png", torch.cat(truth), torch.cat(pixels),
                   [f"client {r['client']}\nclass {r['class']}" for r in rows],
                   f"{target.method.name} / {s.attack} / {s.threat}: round {s.round}, clients "
                   f"{', '.join(map(str, s.clients))}", cols=len(truth[0]))
        summaries = [summary for _client, _where, summary in parts]
        seconds = sum(float(summary["seconds"]) for summary in summaries)
        tested = [summary["evaluator_test_accuracy"] for summary in summaries]
        notes = list(dict.fromkeys(summary["evaluator"] for summary in summaries))
        summary = reconstruction_summary(target, s, rows, None, "; ".join(notes), seconds, digest, status="complete")
        summary["evaluator_test_accuracy"] = None if None in tested else sum(tested) / len(tested)
        summary["clients"] = {str(client): {
            "rows": part["rows"], "scores": part["scores"],
            "evaluator_accuracy_on_attacks": part["evaluator_accuracy_on_attacks"],
            "evaluator_test_accuracy": part["evaluator_test_accuracy"], "seconds": part["seconds"],
            "folder": str(where.relative_to(out)),
        } for client, where, part in parts}
        summary.update(self.pooled_extra(summaries, rows))
        # The summary last: "complete" in it means every other file is written.
        write_json(out / "summary.json", summary)
        return summary


def pooled_share(values: list[Any]) -> float | None:
    """The mean of the numbers among ``values`` ("" where there is none), or None without one."""
    return stats([float(v) for v in values if v != ""])["mean"]
