"""Where a run stands when an engine opens its directory: new, to resume, or complete.

:func:`open_run` is the one start of every run, whoever trains it (``rvepfl train``, a suite's
run, the Flower ServerApp): it computes the config hash once, checks the directory against it
and says what to do. Each caller words its own refusals (it knows how the user named the
directory: ``--resume``, a suite's ``--out``, ``server.out``), and passes the hash on
(:attr:`RunStart.config_hash`) to everything that writes or checks it: the run's first files
(:func:`rvepfl.fl.server.write_run_start`), the client store, the checkpoints, the progress
marker and the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rvepfl.config import Config, config_hash
from rvepfl.errors import CheckpointError, RvepflError
from rvepfl.rundir import RunDir

__all__ = ["RunStart", "open_run"]


@dataclass(frozen=True)
class RunStart:
    """A run directory opened for a config."""

    run: RunDir
    config_hash: str
    """The config's hash, computed once for the run."""
    status: str
    """``new`` (nothing trained: create it), ``resume`` or ``complete``."""
    done: int
    """The last complete round (0 when new)."""


def _another(run: RunDir, recorded: str, chash: str) -> RvepflError:
    return CheckpointError(f"{run.path} belongs to another configuration (hash {recorded}, this one {chash})")


def open_run(
    run: RunDir,
    cfg: Config,
    *,
    chash: str | None = None,
    saved: Config | None = None,
    fresh: Callable[[RunDir], bool] = RunDir.unstarted,
    not_a_run: Callable[[RunDir], RvepflError] | None = None,
    another: Callable[[RunDir, str, str], RvepflError] = _another,
) -> RunStart:
    """Open ``run`` for ``cfg``: where it stands, with the config hash.

    Parameters
    ----------
    run
        The run directory (it may not exist yet).
    cfg
        The config the run trains with.
    chash
        ``cfg``'s hash where the caller needed it earlier (default: computed here).
    saved
        The config the directory's hash is checked against when it differs from ``cfg`` in
        settings outside the hash (``rvepfl train --resume``: the run's config.toml).
    fresh
        Whether a directory without a progress marker may be created (again) (default:
        :meth:`RunDir.unstarted`).
    not_a_run
        The error for a directory without a progress marker that is not fresh (default: the one
        :meth:`RunDir.read_progress` raises).
    another
        The error for a run of another configuration, from (run, recorded hash, this hash).

    Raises
    ------
    CheckpointError
        A damaged progress marker; otherwise as ``not_a_run`` and ``another`` say.
    """
    chash = config_hash(cfg) if chash is None else chash
    if not run.progress.exists():
        if fresh(run):
            return RunStart(run, chash, "new", 0)
        if not_a_run is not None:
            raise not_a_run(run)
    state = run.read_progress()
    if not run.made_with(saved if saved is not None else cfg, chash):
        raise another(run, state["config_hash"], chash)
    done = int(state["completed_round"])
    return RunStart(run, chash, "complete" if done >= cfg.train.rounds else "resume", done)
