"""TensorBoard events of a training run (the ``tensorboard`` setting), for whichever engine runs it.

:class:`TensorBoardLog` implements the engine's progress events
(:class:`rvepfl.fl.server.Progress`) as scalars in ``<run>/tensorboard/``, so ``tensorboard
--logdir runs`` shows every run under ``runs/``. The step of every scalar is the round:

- ``round/<kind>_<metric>``: the means over the clients that finished the round, ``<kind>`` one of
  ``train``, ``test`` (after local training) and ``general`` (before it), ``<metric>`` one of
  ``loss``, ``acc``, ``precision``, ``recall``, ``f1`` (the values of ``metrics/epoch_*.csv`` and
  ``general_test_epochs.csv``); ``round/seconds`` (``round_timing.csv``) and
  ``round/client_failures``;
- ``client_<c>/<kind>_<metric>`` and ``client_<c>/seconds``: each client that finished (the
  values of ``metrics/client_*.csv`` and ``general_test_clients.csv``);
- ``privacy/<key>``: every number of summary.json's ``method_details`` after the round (NbAFL's
  ``sigma_u``, DP-FedAvg's ``epsilon``, DP-SGD's ``epsilon_max``...), and ``client_<c>/privacy_<key>``
  for the per-client entries (DP-SGD's ``clients``); a method without them has none.

A resumed run appends to the same directory: its writer starts with ``purge_step`` = the first
round it trains, so TensorBoard hides the points a stopped process wrote for a round that never
counted. Writing needs the ``tensorboard`` package (``pip install 'rvepfl[tensorboard]'``); it is
imported only when the setting is on.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvepfl.errors import ConfigError
from rvepfl.rundir import METRIC_KEYS, RunDir

if TYPE_CHECKING:
    from rvepfl.config import Config
    from rvepfl.fl.server import Progress

__all__ = ["INSTALL", "Fanout", "TensorBoardLog", "check_tensorboard", "tensorboard_events"]

INSTALL = "pip install 'rvepfl[tensorboard]'"
"""How to install what the ``tensorboard`` setting needs."""

_KINDS = ("train", "test", "general")


def check_tensorboard(cfg: Config, run_path: str | Path) -> None:
    """Nothing when ``cfg.tensorboard`` is off; else a one-line :class:`ConfigError` if
    ``<run_path>/tensorboard`` cannot be created or written, or the ``tensorboard`` package is
    missing. Writes nothing, so a command can check before it creates the run directory.

    >>> from rvepfl.config import Config
    >>> check_tensorboard(Config(), "/nonexistent")  # off: nothing to check
    """
    if not cfg.tensorboard:
        return
    path = Path(run_path) / "tensorboard"
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    head = f"Cannot write TensorBoard events to {path}"
    if os.path.lexists(existing) and not existing.is_dir():
        what = "it" if existing == path else str(existing)
        raise ConfigError(f"{head}: {what} is a file, not a directory; move it away, or leave tensorboard off")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{head}: {existing} is not a directory you may write (check its permissions), "
                          "or leave tensorboard off")
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"tensorboard = true needs the tensorboard package: {INSTALL}")


def _numbers(table: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The finite numbers of ``table`` (booleans, text, None and infinities left out)."""
    for key, value in table.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield key, float(value)


class TensorBoardLog:
    """The progress events of one run as TensorBoard scalars in ``directory`` (step: the round).

    ``details`` gives summary.json's ``method_details`` (the method's ``summary``), read after
    each round. The writer is opened at the first round this process trains, so a run resumed
    after its last round writes nothing (the package is imported here, outside the rounds' time)."""

    def __init__(self, directory: str | Path, details: Callable[[], dict[str, Any]] = dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.directory = Path(directory)
        self.details = details
        self.make_writer = SummaryWriter
        self.writer: Any = None
        self.failures = 0

    def _scalar(self, tag: str, value: float, round_: int) -> None:
        self.writer.add_scalar(tag, value, round_)

    def round_start(self, round_: int, rounds: int, clients: list[int]) -> None:
        if self.writer is None:
            self.writer = self.make_writer(str(self.directory), purge_step=round_)
        self.failures = 0

    def client_done(self, round_: int, index: int, count: int, client: int,
                    metrics: dict[str, dict[str, float]], seconds: float) -> None:
        for kind in _KINDS:
            for key in METRIC_KEYS:
                self._scalar(f"client_{client}/{kind}_{key}", metrics[kind][key], round_)
        self._scalar(f"client_{client}/seconds", seconds, round_)

    def client_failed(self, round_: int, index: int, count: int, client: int, failure: Any) -> None:
        self.failures += 1

    def round_done(self, round_: int, means: dict[str, dict[str, float]], seconds: float) -> None:
        for kind in _KINDS:
            for key in METRIC_KEYS:
                self._scalar(f"round/{kind}_{key}", means[kind][key], round_)
        self._scalar("round/seconds", seconds, round_)
        self._scalar("round/client_failures", self.failures, round_)
        details = self.details()
        for key, value in _numbers(details):
            self._scalar(f"privacy/{key}", value, round_)
        for entry in details.get("clients", []):
            if isinstance(entry, dict) and isinstance(entry.get("client"), int):
                for key, value in _numbers(entry):
                    if key != "client":
                        self._scalar(f"client_{entry['client']}/privacy_{key}", value, round_)
        self.writer.flush()  # the round is committed: its points are on disk too

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Fanout:
    """Passes each progress event to every listener, in order."""

    def __init__(self, *listeners: Any) -> None:
        self.listeners = listeners

    def round_start(self, *args: Any) -> None:
        for listener in self.listeners:
            listener.round_start(*args)

    def client_done(self, *args: Any) -> None:
        for listener in self.listeners:
            listener.client_done(*args)

    def client_failed(self, *args: Any) -> None:
        for listener in self.listeners:
            listener.client_failed(*args)

    def round_done(self, *args: Any) -> None:
        for listener in self.listeners:
            listener.round_done(*args)


@contextmanager
def tensorboard_events(cfg: Config, run: RunDir, progress: Progress | None,
                       details: Callable[[], dict[str, Any]] = dict) -> Iterator[Progress | None]:
    """``progress`` as it is when ``cfg.tensorboard`` is off; else (once
    :func:`check_tensorboard` passed) ``progress`` and a :class:`TensorBoardLog` of ``run``
    together, its writer closed on the way out."""
    if not cfg.tensorboard:
        yield progress
        return
    check_tensorboard(cfg, run.path)
    log = TensorBoardLog(run.tensorboard, details)
    try:
        yield log if progress is None else Fanout(progress, log)
    finally:
        log.close()
