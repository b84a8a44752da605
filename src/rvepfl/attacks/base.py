"""What an attack is: one class per attack, found by :mod:`rvepfl.attacks.registry`.

An attack is a subclass of :class:`Attack` with a ``name``, defined in a module of
:mod:`rvepfl.attacks`. It declares

- ``name`` (the CLI's ``rvepfl attack NAME``, the audit's ``attacks`` entries), ``label`` (its
  name in tables and plots) and ``rank`` (its place in lists);
- ``threats``: the threat models it serves (:data:`rvepfl.attacks.threat.THREAT_MODELS`), the
  first being its default, and ``surface``, what it attacks, in words (for a wrong choice);
- ``default_iterations`` and ``default_restarts`` (None: it takes no such setting);
- ``Params``: its own settings dataclass (defaults, a docstring under every field, ``check()``),
  set with ``--param KEY=VALUE`` or an audit's ``[audit.params.<name>]`` table; None when it has
  no settings beyond the common ones of :class:`AttackRequest`;
- ``membership``: whether it scores membership (ROC AUC) rather than reconstructions (PSNR, SSIM
  and the evaluator's share);

and implements :meth:`Attack.resolve` (the request checked against the run, into
:class:`AttackSettings`), :meth:`Attack.open` (open what it attacks, before anything is
written), :meth:`Attack.run` (attack, write ``scores.csv``, ``summary.json`` and a figure) and
:meth:`Attack.report` (the lines ``rvepfl attack`` prints). The families
:class:`rvepfl.attacks.upload.UploadAttack` (an observed gradient or update) and
:class:`rvepfl.attacks.inversion.InversionAttack` (one image per class from a model) implement most
of it; a new attack of a family writes only its algorithm.

**Several clients.** Under threat model ``stolen`` an attack that says so
(``several_clients``: model inversion and membership inference) attacks the personal models of
several clients in one job (``--client all``, an audit's ``stolen_clients``): each client's
single-client job in turn (:meth:`Attack.client_settings`), written to ``OUT/clients/<cccc>/``
and skipped there when complete, so a stopped job goes on with the next unfinished client; then
:meth:`Attack.pool` writes one ``scores.csv`` (every client's rows, a ``client`` column), one
figure and ``summary.json`` (pooled and per-client scores), the summary last
(:meth:`Attack.run_clients`).

The helpers every attack shares (the evaluator, the image grid, the summary's statistics) are
here too, so that no attack module imports another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rvepfl.attacks.common import read_summary
from rvepfl.attacks.threat import THREAT_MODELS, Target
from rvepfl.errors import CheckpointError, ConfigError, short_repr
from rvepfl.io import atomic_write_bytes, file_lock, read_csv_rows, write_json
from rvepfl.params import check_params, field_docs

__all__ = ["CLIENTS_DIR", "DEFAULT_CLIENTS_IN_SUM", "MIN_EVALUATOR_DRAW", "MIN_EVALUATOR_IMAGES", "Attack",
           "AttackRequest", "AttackSettings", "Log", "check_clients", "check_clients_in_sum", "load_or_train_evaluator",
           "parse_clients", "parse_params", "pooled_rows", "read_rows"]

Log = Callable[[str], None]

MIN_EVALUATOR_IMAGES = 500
"""The fewest images an evaluator is trained on at all: held out (unused by every client), or,
when the run left fewer out, the images of the clients other than the attacked one."""
CLIENTS_DIR = "clients"
"""The folder of a job on several clients (``OUT/clients/<cccc>/``) that holds each client's own job."""
MIN_EVALUATOR_DRAW = 100
"""The smallest ``--evaluator-images``: the evaluator trains on 80 % of its images and is tested on
the other 20 %, so fewer leave it (and its reported accuracy) next to guessing; below 3 it cannot
be split at all."""


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
    """Local steps of the observed round (threat models ``update`` and ``aggregate``; 0 otherwise)."""
    evaluator_images: int = 5000
    """Held-out images the evaluator may train on (it labels every reconstruction; 0 for mia,
    which has none)."""
    references: int = 0
    """mia: LiRA's reference models (0 for the other attacks). For mia, ``images`` is the number
    of members, and as many non-members are evaluated (on several clients, per client; 0: all of
    each client's training images)."""
    params: Any = None
    """The attack's own settings (an instance of its ``Params``), or None when it has none."""
    clients: tuple[int, ...] = ()
    """Threat model ``stolen``: the clients whose personal models the job attacks in turn, when
    more than one (``client`` is the first of them); empty: ``client`` alone."""
    clients_in_sum: int = 0
    """Threat model ``aggregate``: the clients whose uploads the observed mean holds (0 otherwise)."""

    @property
    def victims(self) -> tuple[int, ...]:
        """The clients the job attacks: ``clients``, or ``client`` alone."""
        return self.clients or (self.client,)

    def digest(self) -> str:
        fields = asdict(self)
        if fields["references"] == 0:  # left out, so the digests of the attacks before mia stay as they were
            del fields["references"]
        if fields["params"] is None:  # left out, so the digests of the attacks without settings stay as they were
            del fields["params"]
        if not fields["clients"]:  # left out, so the digests of the jobs on one client stay as they were
            del fields["clients"]
        if fields["clients_in_sum"] == 0:  # left out, so the digests of the other threat models stay as they were
            del fields["clients_in_sum"]
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AttackRequest:
    """What a user asks of an attack (``rvepfl attack``'s options, or an audit's ``[audit]`` table),
    before it is checked against a run. None: the attack's default."""

    threat: str | None = None
    round: int | None = None
    client: int = 0
    batch_size: int = 1
    images: int | None = None
    iterations: int | None = None
    restarts: int | None = None
    seed: int = 0
    local_steps: int | None = None
    evaluator_images: int = 5000
    references: int | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Values for the attack's ``Params`` fields, by name."""
    clients: tuple[int, ...] | str | None = None
    """Threat model ``stolen``: the clients whose personal models to attack in turn, ``"all"`` or
    their indices (``--client all``, an audit's ``stolen_clients``); None: ``client`` alone."""
    clients_in_sum: int | None = None
    """Threat model ``aggregate``: the clients whose uploads the observed mean holds (``--clients-in-sum``);
    None: :data:`DEFAULT_CLIENTS_IN_SUM`."""


DEFAULT_CLIENTS_IN_SUM = 2
"""Threat model ``aggregate``: the clients in the observed mean unless ``--clients-in-sum`` says otherwise."""


def check_clients_in_sum(request: AttackRequest, threat: str) -> None:
    """A one-line error where ``request`` sets ``clients_in_sum`` for a threat model other than ``aggregate``."""
    if request.clients_in_sum is not None and threat != "aggregate":
        raise ConfigError(f"--clients-in-sum applies to --threat-model aggregate only, got --threat-model {threat}")


def parse_clients(text: str) -> tuple[int, tuple[int, ...] | str | None]:
    """``--client``'s value as (``AttackRequest.client``, ``AttackRequest.clients``): one index,
    ``all``, or indices separated by commas (the first of them is ``client``).

    >>> parse_clients("3"), parse_clients("all"), parse_clients("0, 2")
    ((3, None), (0, 'all'), (0, (0, 2)))
    """
    value = text.strip().lower()
    if value == "all":
        return 0, "all"
    try:
        indices = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(f"Expected --client to be a client's index, all, or indices such as 0,3, got "
                          f"{short_repr(text)}") from None
    return (indices[0], None) if len(indices) == 1 else (indices[0], indices)


def _clients_words(clients: tuple[int, ...] | str) -> str:
    return clients if isinstance(clients, str) else ",".join(map(str, clients))


def check_clients(attack: type[Attack] | Attack, request: AttackRequest) -> None:
    """A one-line error where ``request`` names several clients (``clients``) for a threat
    model other than ``stolen``, or for an attack that attacks one client per job."""
    if request.clients is None:
        return
    threat = request.threat or attack.threats[0]
    if threat != "stolen":
        raise ConfigError(f"--client {_clients_words(request.clients)} applies to --threat-model stolen only (one "
                          f"personal model per client), got {threat}: give one client")
    if not attack.several_clients:
        raise ConfigError(f"{attack.name} attacks one client per job: give one --client")


def parse_params(attack: type[Attack] | Attack, values: dict[str, Any], where: str = "--param") -> Any:
    """``attack``'s ``Params`` with ``values`` set (checked: unknown keys, types, ranges), or None
    when the attack has no ``Params`` (then ``values`` must be empty)."""
    params_cls = attack.Params
    if params_cls is None:
        if values:
            raise ConfigError(f"{attack.name} has no settings of its own: drop {where} "
                              f"({', '.join(sorted(values))})")
        return None
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"Unknown {attack.name} setting {key!r} in {where}: choose from {', '.join(fields)}")
        default = getattr(params_cls(), key)
        converted[key] = _convert(f"{attack.name}.{key}", value, type(default))
    params = params_cls(**converted)
    check_params(params, attack.name)
    return params


def _convert(key: str, value: Any, kind: type) -> Any:
    """``value`` (a TOML value, or the text of ``--param KEY=VALUE``) as ``kind`` (int, float, bool)."""
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text not in ("true", "false"):
                    raise ValueError(text)
                return text == "true"
            return int(text) if kind is int else float(text)
        except ValueError:
            wanted = {bool: "true or false", int: "an integer"}.get(kind, "a number")
            raise ConfigError(f"Expected `{key}` to be {wanted}, got {short_repr(value)}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        wanted = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, kind.__name__)
        raise ConfigError(f"Expected `{key}` to be {wanted}, got {short_repr(value)}")
    return value


class Attack:
    """One attack: its name, the threat models it serves, its settings and how it runs and reports.

    Subclasses set the class attributes below and implement :meth:`resolve`, :meth:`open`,
    :meth:`run` and :meth:`report` (the families do most of it). Instances hold no state: the
    registry makes one per attack.
    """

    name: ClassVar[str]
    label: ClassVar[str] = ""
    """Its name in tables, plots and the frontier's panels (``Inverting Gradients``)."""
    description: ClassVar[str] = ""
    """One line: what it does, and its source."""
    rank: ClassVar[int] = 100
    threats: ClassVar[tuple[str, ...]] = ()
    """The threat models it serves; the first is the default."""
    surface: ClassVar[str] = ""
    """What it attacks, in words, for the message of a wrong threat model (``inverts a model``)."""
    default_iterations: ClassVar[int | None] = None
    default_restarts: ClassVar[int | None] = None
    """None: the attack takes no ``--restarts``."""
    Params: ClassVar[type | None] = None
    smoke: ClassVar[dict[str, Any]] = {}
    """Its own settings under ``--smoke`` (an audit or frontier shrunk to check a file end to end)."""
    audit_options: ClassVar[tuple[str, ...]] = ()
    """The fields of :class:`AttackRequest` that an audit's settings set for it (``images``: the
    audit's images per gradient attack, ...); the attack's defaults stand for the others."""
    needs_single_image: ClassVar[bool] = False
    """Whether it reads the label of a single image (then ``--batch-size`` must be 1)."""
    membership: ClassVar[bool] = False
    """Whether it scores membership (ROC AUC) rather than reconstructions."""
    several_clients: ClassVar[bool] = False
    """Whether one job of it under ``stolen`` may attack several clients' models in turn
    (:meth:`run_clients`; it then implements :meth:`pool`)."""
    success_label: ClassVar[str] = "images recognised (%)"
    """What its success measures, in the frontier's panels."""
    files: ClassVar[str] = "scores.csv, summary.json, grid.png"
    """What it writes, as ``rvepfl attack`` names it."""
    scores_psnr: ClassVar[str] = "psnr"
    scores_ssim: ClassVar[str] = "ssim"
    """The ``scores.csv`` columns of the PSNR and SSIM a suite's tables show."""

    # -- settings ------------------------------------------------------------------------------
    def check_threat(self, threat: str | None) -> str:
        """The threat model ``threat`` names (None: the default), or a one-line error."""
        threat = threat or self.threats[0]
        if threat not in THREAT_MODELS:
            raise ConfigError(f"Unknown threat model {threat!r}: choose one of {', '.join(THREAT_MODELS)}")
        if threat not in self.threats:
            first, *rest = self.threats
            choices = f"{first} (the default)" + "".join(f" or {t}" for t in rest)
            raise ConfigError(f"{self.name} {self.surface}: use --threat-model {choices}, got {threat}")
        return threat

    def resolve(self, target: Target, request: AttackRequest) -> AttackSettings:
        """Check ``request`` against ``target``'s run; raise a one-line error for each bad choice."""
        raise NotImplementedError

    def open(self, target: Target, settings: AttackSettings, cache: Path | None = None) -> None:
        """Open what the attack reads (checkpoints, the model under its threat model, a cache it
        would read from ``cache``, default ``RUN/attacks/``), so that a corrupt file fails before
        anything is written; raises
        :class:`~rvepfl.errors.NoAttackSurface` where the method exposes nothing to it."""
        raise NotImplementedError

    def run(self, target: Target, settings: AttackSettings, out: Path, log: Log, *,
            cache: Path | None = None, status: Log | None = None) -> dict[str, Any]:
        """Attack; write ``out`` (``summary.json`` last); return the summary."""
        raise NotImplementedError

    def report(self, summary: dict[str, Any]) -> list[str]:
        """What ``rvepfl attack`` prints of a finished attack's summary (a reconstruction
        attack's: each score's mean ± std and the evaluator's share)."""
        return reconstruction_report(summary)

    def audit_scores(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The score columns of the attack's row in an audit's ``audit.csv`` (a reconstruction
        attack's: the mean of each score, the evaluator's share and its own test accuracy)."""
        return reconstruction_audit_scores(summary)

    def table_header(self, title: str) -> list[str]:
        """The attack's columns in an audit's table (``title``: the job, e.g. ``ig (update)``)."""
        if self.membership:
            return [f"{title} AUC (LiRA)", f"{title} AUC (loss)", f"{title} TPR at 1 % FPR (LiRA, %)"]
        return [f"{title} PSNR (dB)", f"{title} SSIM", f"{title} evaluator acc (%)"]

    def panel_title(self, threat: str) -> str:
        """The attack under ``threat`` as a frontier panel's title."""
        return f"{self.label}, {threat}"

    @classmethod
    def settings_doc(cls) -> dict[str, tuple[Any, str]]:
        """Its ``Params`` fields: name -> (default, meaning)."""
        if cls.Params is None:
            return {}
        docs = field_docs(cls.Params)
        defaults = cls.Params()
        return {f.name: (getattr(defaults, f.name), docs.get(f.name, "")) for f in dataclasses.fields(cls.Params)}

    # -- several clients -----------------------------------------------------------------------------
    def victims(self, target: Target, request: AttackRequest) -> tuple[int, ...]:
        """The clients ``request`` attacks, checked against ``target``'s run: ``client`` alone,
        or (threat model ``stolen``) ``clients``, every client for ``"all"``, in the given order
        without repeats."""
        check_clients(self, request)
        if request.clients is None:
            return (target.check_client(request.client),)
        if request.clients == "all":
            return tuple(range(target.cfg.data.num_clients))
        if isinstance(request.clients, str) or not request.clients:
            raise ConfigError(f"Expected the clients to be all or a non-empty list of indices, got "
                              f"{short_repr(request.clients)}")
        return tuple(dict.fromkeys(target.check_client(c) for c in request.clients))

    def client_settings(self, target: Target, settings: AttackSettings, client: int) -> AttackSettings:
        """The settings of the single-client job on ``client`` that a job on several clients runs
        as its part: those of ``rvepfl attack`` on that client alone, with the same digest, so
        that the numbers are the same."""
        return dataclasses.replace(settings, client=client, clients=())

    def run_clients(self, target: Target, settings: AttackSettings, out: Path, log: Log, *,
                    cache: Path | None = None, status: Log | None = None) -> dict[str, Any]:
        """A job on several clients (``settings.clients``): each client's single-client job in
        ``out/clients/<cccc>/`` (:meth:`client_settings`; skipped there when complete), a
        ``running`` summary after each, then :meth:`pool` (summary last). A complete job with
        these settings is skipped, unless it was scored without an evaluator's labels (then each
        client's job decides, as :meth:`evaluator_unless_done` does, and the pool is redone)."""
        s = settings
        digest = s.digest()
        previous = self.previous(out, digest)
        if previous is not None and (self.membership or previous.get("evaluator_test_accuracy") is not None):
            log(f"{s.attack}: complete with these settings, skipped ({out})")
            return previous
        out.mkdir(parents=True, exist_ok=True)
        parts: list[tuple[int, Path, dict[str, Any]]] = []
        for i, client in enumerate(s.clients):
            head = f"client {client} ({i + 1} of {len(s.clients)})"
            where = out / CLIENTS_DIR / f"{client:04d}"
            summary = self.run(target, self.client_settings(target, s, client), where,
                               lambda line, h=head: log(f"{h}: {line}"), cache=cache,  # type: ignore[misc]  # a lambda with a default
                               status=None if status is None else (lambda line, h=head: status(f"{h}: {line}")))  # type: ignore[misc]  # a lambda with a default
            parts.append((client, where, summary))
            if i + 1 < len(s.clients):  # where a stopped job stands (the parts are the resume points)
                write_json(out / "summary.json", {"status": "running", "settings": asdict(s),
                                                  "settings_digest": digest, "clients_done": list(s.clients[:i + 1])})
        return self.pool(target, s, parts, out)

    def pool(self, target: Target, settings: AttackSettings, parts: list[tuple[int, Path, dict[str, Any]]],
             out: Path) -> dict[str, Any]:
        """Write a job on several clients from its clients' jobs ``parts`` ((client, its folder,
        its summary), in order): one ``scores.csv`` of every client's rows, one figure and
        ``summary.json`` (pooled and per-client scores), the summary last; return the summary."""
        raise NotImplementedError

    # -- what the families share ------------------------------------------------------------------
    def iterations_and_restarts(self, request: AttackRequest) -> tuple[int, int]:
        """The iterations and restarts ``request`` resolves to (its own, or the attack's
        defaults), checked; an attack that takes no restarts refuses ``--restarts``."""
        its = request.iterations if request.iterations is not None else self.default_iterations
        if its is None or its < 1:
            raise ConfigError(f"Expected --iterations >= 1, got {its}")
        if self.default_restarts is None:
            if request.restarts is not None:
                raise ConfigError(f"{self.name} takes no --restarts (`rvepfl attacks` lists the attacks that do): "
                                  f"drop it")
            return its, 1
        n = request.restarts if request.restarts is not None else self.default_restarts
        if n < 1:
            raise ConfigError(f"Expected --restarts >= 1, got {n}")
        return its, n

    def previous(self, out: Path, digest: str) -> dict[str, Any] | None:
        """``out``'s summary when it is complete with these settings (then the attack is skipped)."""
        summary = read_summary(out / "summary.json")
        if summary.get("status") == "complete" and summary.get("settings_digest") == digest:
            return summary
        return None

    def evaluator_victims(self, target: Target, settings: AttackSettings) -> int | tuple[int, ...]:
        """The clients whose images the attack reconstructs, which its evaluator must never have
        seen (default: ``settings.client``)."""
        return settings.client

    def evaluator_unless_done(self, target: Target, settings: AttackSettings, out: Path, log: Log,
                              cache: Path | None) -> tuple[dict[str, Any] | None, Any | None, str]:
        """A reconstruction attack's start: (the summary of a complete attack with these settings,
        which is then skipped; else None), the evaluator and its note (:func:`load_or_train_evaluator`).

        A complete attack scored without an evaluator's labels runs again when an evaluator can
        now be had (it was scored before the fallback to the other clients' images existed)."""
        previous = self.previous(out, settings.digest())
        skipped = f"{settings.attack}: complete with these settings, skipped ({out})"
        if previous is not None and previous.get("evaluator_test_accuracy") is not None:
            log(skipped)
            return previous, None, ""
        evaluator, note = load_or_train_evaluator(target, settings.evaluator_images, log, cache,
                                                  victim=self.evaluator_victims(target, settings))
        if previous is not None:
            if evaluator is None:
                log(skipped)
                return previous, None, ""
            log(f"{settings.attack}: complete but scored without an evaluator; again, with one ({out})")
        return None, evaluator, note


def check_evaluator_images(n: int) -> int:
    if n < MIN_EVALUATOR_DRAW:
        raise ConfigError(f"Expected --evaluator-images >= {MIN_EVALUATOR_DRAW} (the evaluator trains on 80 % of "
                          f"them and is tested on the other 20 %), got {n}")
    return n


# -- the evaluator -------------------------------------------------------------------------------
def evaluator_images(target: Target, max_images: int, *,
                     victim: int | tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor, str, str,
                                                                    torch.Tensor] | str:
    """The images the evaluator of ``target``'s data trains on: up to ``max_images`` of those no
    client has (a seeded draw), or, when the run left fewer than :data:`MIN_EVALUATOR_IMAGES` out
    and ``victim`` is given, of the clients other than ``victim`` (one client, or several: the
    clients of an ``aggregate`` view).

    Returns (the source's images, its labels, where they come from in words, the cache's file
    prefix, the positions of the evaluator's draw within the source), or the reason there are
    too few, a string. An attack that needs images the evaluator never saw (an image prior) takes
    them from the rest of the source.
    """
    from rvepfl.seeding import numpy_rng

    x, y = target.heldout()
    source, prefix = "images no client has", "evaluator"
    if len(y) < MIN_EVALUATOR_IMAGES:
        unused = len(y)
        reason = (f"no evaluator: the run left {unused} images of {target.dataset} unused by every client "
                  f"(needs >= {MIN_EVALUATOR_IMAGES})")
        if victim is None:
            return f"{reason}; train with data.subset to keep some out"
        victims = (victim,) if isinstance(victim, int) else tuple(victim)
        if len(victims) == 1:
            who, whose = f"client {victims[0]}", f"client {victims[0]}'s"
            prefix = f"evaluator-without-client{victims[0]}"
        else:
            names = ", ".join(map(str, victims))
            who, whose = f"clients {names}", f"any of clients {names}"
            prefix = "evaluator-without-clients" + "-".join(map(str, victims))
        x, y = target.images_without(victims)
        if len(y) < MIN_EVALUATOR_IMAGES:
            return (f"{reason}, and the clients other than {who} hold {len(y)}; train with "
                    "data.subset to keep some out")
        source = (f"images of the clients other than {who}, never {whose} (the run left "
                  f"{unused} images unused by every client)")
    n = min(len(y), max_images)
    pick = torch.from_numpy(np.sort(numpy_rng(target.cfg.seed, "attack", n).permutation(len(y))[:n]))
    return x, y, source, prefix, pick


def load_or_train_evaluator(target: Target, max_images: int, log: Log, cache: Path | None = None, *,
                            victim: int | tuple[int, ...] | None = None) -> tuple[Any | None, str]:
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

    drawn = evaluator_images(target, max_images, victim=victim)
    if isinstance(drawn, str):
        return None, drawn
    x, y, source, prefix, pick = drawn
    x, y = x[pick], y[pick]
    n = len(y)
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


def evaluator_labels(evaluator: Any | None, images: torch.Tensor) -> list[int | str]:
    """The evaluator's label of each image, or "" for each without an evaluator."""
    if evaluator is None:
        return [""] * len(images)
    return [int(v) for v in evaluator.predict(images)]


# -- what a reconstruction attack writes ---------------------------------------------------------
def read_rows(path: Path) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """A ``scores.csv``: its header, its rows as written (text) and as values (an int, a float,
    or "" where empty), to pool the rows of several clients' jobs without rewriting a digit."""
    header, raw = read_csv_rows(path)
    typed = []
    for values in raw:
        row: dict[str, Any] = {}
        for key, value in zip(header, values):
            try:
                row[key] = int(value)
            except ValueError:
                try:
                    row[key] = float(value)
                except ValueError:
                    row[key] = value
        typed.append(row)
    return header, raw, typed


def pooled_rows(parts: list[tuple[int, Path, dict[str, Any]]]) -> tuple[list[str], list[list[str]],
                                                                          list[dict[str, Any]]]:
    """The ``scores.csv`` rows of every part (client by client, as written) under their common header."""
    header: list[str] | None = None
    raw: list[list[str]] = []
    typed: list[dict[str, Any]] = []
    for client, where, _summary in parts:
        own, rows, values = read_rows(where / "scores.csv")
        if header is not None and own != header:
            raise CheckpointError(f"{where / 'scores.csv'} has the columns {own}, client {parts[0][0]}'s "
                                  f"{header}: delete {where} to attack client {client} again")
        header = own
        raw.extend(rows)
        typed.extend(values)
    return header or [], raw, typed


def stats(values: list[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation and count of the finite ``values``."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(finite, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def reconstruction_summary(target: Target, settings: AttackSettings, rows: list[dict[str, Any]],
                           evaluator: Any | None, evaluator_note: str, seconds: float, digest: str, *,
                           status: str) -> dict[str, Any]:
    """The ``summary.json`` of a reconstruction attack: its settings, mean ± std of every score
    column of ``rows``, the evaluator's share of correct labels and its own test accuracy."""
    score_keys = [k for k in (rows[0] if rows else {}) if k.endswith(("mse", "psnr", "ssim", "confidence"))]
    scores = {k: stats([r[k] for r in rows]) for k in score_keys}
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


def reconstruction_report(summary: dict[str, Any], out_files: str = "scores.csv, summary.json, grid.png") -> list[str]:
    """``rvepfl attack``'s lines for a reconstruction attack: each score's mean ± std, the evaluator's share."""
    lines = [f"{key:>14}: {value['mean']:.4g} ± {value['std']:.2g} (n = {value['n']})"
             for key, value in summary["scores"].items() if value["mean"] is not None]
    acc = summary["evaluator_accuracy_on_attacks"]
    lines.append(f"evaluator labels {'n/a' if acc is None else f'{100 * acc:.0f} %'} of the reconstructions "
                 f"correctly ({summary['evaluator']})")
    return lines


def reconstruction_audit_scores(summary: dict[str, Any]) -> dict[str, Any]:
    """The mean of every score, the evaluator's share and its own test accuracy (``audit.csv``)."""
    return {**{k: v["mean"] for k, v in summary["scores"].items()},
            "evaluator_accuracy": summary["evaluator_accuracy_on_attacks"],
            "evaluator_test_accuracy": summary["evaluator_test_accuracy"]}


def image_grid(path: Path, top: torch.Tensor, bottom: torch.Tensor, titles: list[str], caption: str, *,
               cols: int | None = None) -> None:
    """A PNG: ``top`` images above ``bottom`` images, column titles, one caption; ``cols``
    images per row (default up to 16)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(top)
    cols = min(n, cols or 16)
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
