"""The run directory: layout, the six published CSVs, progress and checkpoints.

::

    <run>/
      config.toml            resolved configuration, exactly what ran
      summary.json           final metrics, timings, versions, seed
      accuracy.png           accuracy per round (written by `rvepfl train` and the Flower ServerApp)
      partition.json         per-client sizes and label counts
      partition.npz          per-client indices into the pool (train images, then test images)
      metrics/               the six published CSVs + round_timing.csv + client_failures.csv
      checkpoints/round_NNNN/global.safetensors, clients/NNNN.safetensors
      state/                 progress.json and the client store (for resuming)
      tensorboard/           TensorBoard events (only with ``tensorboard = true``)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rvepfl.config import Config, legacy_config_hash
from rvepfl.errors import CheckpointError, short_repr
from rvepfl.io import is_temp_file, read_csv_rows, remove_temp_files, write_csv, write_json

if TYPE_CHECKING:
    from rvepfl.fl.client import ClientFailure

__all__ = ["CSV_HEADERS", "FAILURE_KINDS", "INIT_FILES", "PUBLISHED_CSVS", "MetricsLog", "RunDir"]

_CLIENT_TRAIN = ["client#", "Round#", "Training Loss", "ACC", "Pre", "Recall", "f1-score"]
_CLIENT_TEST = ["client#", "Round#", "Testing Loss", "ACC", "Pre", "Recall", "f1-score"]
_EPOCH_TRAIN = ["Round#", "Training Loss", "ACC", "Pre", "Recall", "f1-score"]
_EPOCH_TEST = ["Round#", "Testing Loss", "ACC", "Pre", "Recall", "f1-score"]

#: The six CSVs of the published code, with their exact columns, plus our per-round timing and
#: the clients that failed a round (see ``faults`` in the config).
CSV_HEADERS: dict[str, list[str]] = {
    "client_training.csv": _CLIENT_TRAIN,
    "client_testing.csv": _CLIENT_TEST,
    "general_test_clients.csv": _CLIENT_TEST,
    "epoch_training.csv": _EPOCH_TRAIN,
    "epoch_testing.csv": _EPOCH_TEST,
    "general_test_epochs.csv": _EPOCH_TEST,
    "round_timing.csv": ["Round#", "Seconds", "Train Seconds", "Eval Seconds", "Clients"],
    "client_failures.csv": ["Round#", "client#", "Failure", "Seconds", "Message"],
}
#: The CSVs of the published code (the others are ours).
PUBLISHED_CSVS = [n for n in CSV_HEADERS if n not in ("round_timing.csv", "client_failures.csv")]
#: The kinds of client failure in client_failures.csv.
FAILURE_KINDS = ("error", "died", "timeout", "rejected")
#: (client CSV, epoch CSV) for each evaluation.
EVALUATIONS = {
    "train": ("client_training.csv", "epoch_training.csv"),
    "test": ("client_testing.csv", "epoch_testing.csv"),
    "general": ("general_test_clients.csv", "general_test_epochs.csv"),
}
METRIC_KEYS = ("loss", "acc", "precision", "recall", "f1")
#: What a new run directory holds before its progress marker is written (see
#: :func:`rvepfl.fl.server.write_run_start`).
INIT_FILES = frozenset({"config.toml", "partition.json", "partition.npz"})


@dataclass
class MetricsLog:
    """Rows of every CSV, kept in memory and rewritten atomically after each round."""

    rows: dict[str, list[list[Any]]] = field(default_factory=lambda: {n: [] for n in CSV_HEADERS})

    def add_round(
        self,
        round_: int,
        per_client: dict[str, list[tuple[int, dict[str, float]]]],
        timing: tuple[float, float, float, int],
        failures: Sequence[ClientFailure] = (),
    ) -> dict[str, dict[str, float]]:
        """Add one round's rows; return the per-evaluation means over the clients that finished.

        ``timing`` is (seconds, train seconds, eval seconds, clients that finished)."""
        means: dict[str, dict[str, float]] = {}
        for kind, (client_csv, epoch_csv) in EVALUATIONS.items():
            entries = per_client[kind]
            for client, m in entries:
                self.rows[client_csv].append([client, round_, *(m[k] for k in METRIC_KEYS)])
            mean = {k: float(np.mean([m[k] for _, m in entries])) for k in METRIC_KEYS}
            self.rows[epoch_csv].append([round_, *(mean[k] for k in METRIC_KEYS)])
            means[kind] = mean
        self.rows["round_timing.csv"].append([round_, *timing])
        for f in failures:
            self.rows["client_failures.csv"].append([round_, f.client, f.kind, round(f.seconds, 3), f.message])
        return means

    def write(self, directory: Path) -> None:
        for name, header in CSV_HEADERS.items():
            write_csv(directory / name, header, self.rows[name])

    @classmethod
    def read(cls, directory: Path, upto: int) -> MetricsLog:
        """Rows of rounds <= ``upto`` from a run's metrics directory."""
        log = cls()
        for name, header in CSV_HEADERS.items():
            path = directory / name
            if not path.exists():
                if upto > 0 and name != "client_failures.csv":  # runs older than the file have none
                    raise CheckpointError(f"Missing {path}: the run directory is incomplete")
                continue
            found, rows = read_csv_rows(path)
            if found != header:
                raise CheckpointError(f"{path} has columns {found}, expected {header}")
            r_col = header.index("Round#")
            text = {header.index(c) for c in ("Failure", "Message") if c in header}
            for line, row in enumerate(rows, start=2):
                values = _parse_row(path, line, header, row, text)
                if values[r_col] <= upto:
                    log.rows[name].append(values)
        return log

    def round_means(self, kind: str) -> list[list[Any]]:
        """The rows of the per-round means (over the clients that finished) of evaluation ``kind``
        (``train``, ``test`` or ``general``): ``Round#`` then the metrics, one row per round."""
        return self.rows[EVALUATIONS[kind][1]]


def _parse(value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        return float(value)


def _parse_row(path: Path, line: int, header: list[str], row: list[str], text: set[int]) -> list[Any]:
    """One CSV row as values (numbers, but text in the ``text`` columns); raises
    :class:`CheckpointError` naming the file, the line and what is wrong."""
    damaged = "the file is damaged: restore it, or train the run again"
    if len(row) != len(header):
        raise CheckpointError(f"{path}, line {line}: expected {len(header)} values ({', '.join(header)}), "
                              f"got {len(row)}; {damaged}")
    values: list[Any] = []
    for i, (column, value) in enumerate(zip(header, row)):
        if i in text:
            values.append(value)
            continue
        try:
            number = _parse(value)
        except ValueError:
            number = None
        whole = column in ("Round#", "client#", "Clients")
        if number is None or (whole and not isinstance(number, int)):
            kind = "a whole number" if whole else "a number"
            raise CheckpointError(f"{path}, line {line}: `{column}` should be {kind}, "
                                  f"got {short_repr(value)}; {damaged}")
        values.append(number)
    return values


class RunDir:
    """Paths and progress of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.toml")
    summary = property(lambda self: self.path / "summary.json")
    metrics = property(lambda self: self.path / "metrics")
    checkpoints = property(lambda self: self.path / "checkpoints")
    state = property(lambda self: self.path / "state")
    progress = property(lambda self: self.path / "state" / "progress.json")
    tensorboard = property(lambda self: self.path / "tensorboard")

    def round_dir(self, round_: int) -> Path:
        return self.checkpoints / f"round_{round_:04d}"

    def global_checkpoint(self, round_: int) -> Path:
        return self.round_dir(round_) / "global.safetensors"

    def read_progress(self) -> dict[str, Any]:
        """The progress marker; a missing or damaged one raises :class:`CheckpointError`."""
        try:
            value = json.loads(self.progress.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(
                f"{self.path} is not an rvepfl run directory (no state/progress.json)"
            ) from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"Corrupt {self.progress}: {exc}; restore it, or train the run again") from None
        expected = {"completed_round": "a whole number >= 0", "config_hash": "a string",
                    "federation_steps": "a whole number >= 0", "elapsed_seconds": "a finite number >= 0"}
        if not isinstance(value, dict):
            raise CheckpointError(f"Corrupt {self.progress}: expected a JSON object, got {type(value).__name__}; "
                                  "restore it, or train the run again")
        for key, what in expected.items():
            if key not in value and key in ("federation_steps", "elapsed_seconds"):
                continue  # written from the first round on
            v = value.get(key)
            if key == "config_hash":
                ok = isinstance(v, str)
            elif key == "elapsed_seconds":
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            else:
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
            if not ok:
                raise CheckpointError(f"Corrupt {self.progress}: `{key}` should be {what}, got {short_repr(v)}; "
                                      "restore it, or train the run again")
        return value

    def unstarted(self) -> bool:
        """Whether the directory was stopped while being created: no progress marker, and no file
        but those written before it (and temporary files). Such a directory can be created again."""
        if self.progress.exists():
            return False
        files = [p for p in self.path.rglob("*") if not p.is_dir() and not is_temp_file(p)]
        return all((p.parent == self.path and p.name in INIT_FILES) or p == self.state / "precision.json"
                   for p in files)

    def remove_temp_files(self) -> list[Path]:
        """Remove the temporary files of writes that a stopped process left in the run directory."""
        return remove_temp_files(self.path)

    def made_with(self, cfg: Config, chash: str) -> bool:
        """Whether the run's progress marker records ``chash``, ``cfg``'s config hash (or, for a
        run made before methods owned their settings, the hash that scheme gave ``cfg``)."""
        recorded = self.read_progress()["config_hash"]
        return recorded == chash or recorded == legacy_config_hash(cfg)

    def check_config(self, cfg: Config, chash: str) -> dict[str, Any]:
        """The progress marker, once checked to be of a run of ``cfg``, whose config hash is
        ``chash`` (:meth:`made_with`)."""
        state = self.read_progress()
        if not self.made_with(cfg, chash):
            raise CheckpointError(f"{self.path} belongs to another configuration (hash {state['config_hash']}, "
                                  f"this one {chash})")
        return state

    def write_progress(self, completed_round: int, config_hash: str, **extra: Any) -> None:
        write_json(self.progress, {"completed_round": completed_round, "config_hash": config_hash, **extra})
