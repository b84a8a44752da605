"""Run one attack against one run directory: ``rvepfl attack ATTACK --run RUN_DIR``, and every job
of an audit or a frontier.

The attack is the class the registry finds for its name (:mod:`rvepfl.attacks.registry`); this
module only checks a request against the run and hands it on. Each attack writes into its output
directory (default ``RUN_DIR/attacks/<attack>-<threat>``):

- ``scores.csv``: one row per attacked image (gradient attacks), per class (model inversion) or
  per evaluated image (membership inference);
- ``summary.json``: the settings, the threat model in words, the scores' summary, the time taken;
  written last, so "complete" in it means every other file is written;
- a figure: ``grid.png`` (the ground truth, or the class's mean real image, above each
  reconstruction) or ``roc.png`` (membership inference);
- ``reconstructions.safetensors`` (reconstruction attacks): the reconstructions in [0, 1] pixel space.

Under threat model ``stolen``, model inversion and membership inference may attack several
clients' personal models in one job (``--client all``, or an audit's ``stolen_clients``): each
client's job is written to ``clients/<cccc>/`` as ``rvepfl attack --client <c>`` would write it,
and the files above pool them (``scores.csv``'s ``client`` column; the summary's pooled scores,
and each client's under ``clients``).

Every setting, the evaluator's image count included, is hashed into the summary: a changed one
starts the attack afresh. An interrupted gradient attack resumes where it stopped when the same
command is run again, and an interrupted job on several clients with the next unfinished client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rvepfl.attacks.base import (
    MIN_EVALUATOR_DRAW,
    MIN_EVALUATOR_IMAGES,
    AttackRequest,
    AttackSettings,
    Log,
    load_or_train_evaluator,
)
from rvepfl.attacks.common import read_summary
from rvepfl.attacks.registry import attack as attack_named
from rvepfl.attacks.threat import Target

__all__ = ["MIN_EVALUATOR_DRAW", "MIN_EVALUATOR_IMAGES", "AttackRequest", "AttackSettings", "attack_state",
           "load_or_train_evaluator", "resolve_settings", "run_attack"]


def resolve_settings(target: Target, attack: str, request: AttackRequest) -> AttackSettings:
    """Check ``request`` for ``attack`` against ``target``'s run; a one-line error for each bad choice."""
    return attack_named(attack).resolve(target, request)


def attack_state(out: Path, settings: AttackSettings) -> str:
    """What :func:`run_attack` finds in ``out`` for ``settings``: ``complete`` (it skips the
    attack), ``resume`` (a stopped gradient attack, or a job on several clients, it continues)
    or ``new``."""
    summary = read_summary(out / "summary.json")
    if summary.get("settings_digest") != settings.digest():
        return "new"
    return {"complete": "complete", "running": "resume"}.get(str(summary.get("status")), "new")


def run_attack(target: Target, settings: AttackSettings, out: Path, log: Log = lambda line: None, *,
               evaluator_cache: Path | None = None, status: Log | None = None) -> dict[str, Any]:
    """Run ``settings`` against ``target``; write (or complete) ``out``; return the summary.

    The caches an attack builds (the evaluator, LiRA's reference models, an image prior) go to
    ``evaluator_cache`` (default ``RUN/attacks/``). ``log`` receives the attack's lines with the
    time left in it; ``status``, if given, an in-progress line every
    :data:`rvepfl.attacks.common.STATUS_EVERY` seconds while the attack iterates (the iteration,
    the time left), e.g. :meth:`rvepfl.progress.ProgressStream.status`.
    """
    return attack_named(settings.attack).run(target, settings, out, log, cache=evaluator_cache, status=status)
