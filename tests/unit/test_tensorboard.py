"""The ``tensorboard`` setting: the events read back hold the run's CSV values and privacy figures,
a resumed run hides the points of a round that never counted, and a directory that cannot be
written or a missing package is a one-line error before anything is written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rvepfl.cli import main
from rvepfl.config import Config, apply_overrides, config_hash
from rvepfl.errors import ConfigError
from rvepfl.rundir import EVALUATIONS, METRIC_KEYS
from rvepfl.tensorboard import INSTALL, TensorBoardLog, check_tensorboard


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the events in ``directory``, as TensorBoard reads them."""
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class _StopAtRound2:
    """Progress that stops the run as round 2 starts (round 1 committed), as Ctrl-C would."""

    def round_start(self, round_: int, *args) -> None:
        if round_ == 2:
            raise KeyboardInterrupt

    def client_done(self, *args) -> None: ...
    def client_failed(self, *args) -> None: ...
    def round_done(self, *args) -> None: ...


@pytest.mark.slow  # several whole runs, one stopped and resumed
def test_the_events_hold_the_csv_values_and_the_privacy_figures(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr("rvepfl.cli._printer", lambda quiet, prefix="": _StopAtRound2())
        assert main(["train", "--method", "dp-fedavg", "--subset", "200", "--clients", "2", "--rounds", "2",
                     "--local-epochs", "1", "--batch-size", "32", "--threads", "1", "--workers", "1",
                     "--device", "cpu", "--tensorboard", "--out", str(run)]) == 130
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # a second writer appends round 2
    assert len(list((run / "tensorboard").iterdir())) == 2
    found = scalars(run / "tensorboard")
    expected: dict[str, list[tuple[int, float]]] = {}
    for kind, (client_csv, round_csv) in EVALUATIONS.items():
        for row in rows(run / "metrics" / client_csv):
            for key, value in zip(METRIC_KEYS, list(row.values())[2:]):
                point = (int(row["Round#"]), float(value))
                expected.setdefault(f"client_{row['client#']}/{kind}_{key}", []).append(point)
        for row in rows(run / "metrics" / round_csv):
            for key, value in zip(METRIC_KEYS, list(row.values())[1:]):
                expected.setdefault(f"round/{kind}_{key}", []).append((int(row["Round#"]), float(value)))
    for row in rows(run / "metrics" / "round_timing.csv"):
        expected.setdefault("round/seconds", []).append((int(row["Round#"]), float(row["Seconds"])))
        expected.setdefault("round/client_failures", []).append((int(row["Round#"]), 0.0))
    details = json.loads((run / "summary.json").read_text())["method_details"]
    assert details["epsilon"] > 0
    privacy = {f"privacy/{k}" for k, v in details.items() if isinstance(v, (int, float))}
    assert {"privacy/epsilon", "privacy/noise_std", "privacy/rounds_accounted"} <= privacy
    client_seconds = {f"client_{c}/seconds" for c in (0, 1)}
    assert set(found) == set(expected) | privacy | client_seconds
    for tag, points in expected.items():
        assert [s for s, _ in found[tag]] == [s for s, _ in points], tag
        assert [v for _, v in found[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag  # float32
    assert found["privacy/epsilon"][-1] == (2, pytest.approx(details["epsilon"], rel=1e-6))
    assert found["privacy/epsilon"][0][1] < found["privacy/epsilon"][1][1]  # the budget spent grows
    assert all(len(found[t]) == 2 and all(v > 0 for _, v in found[t]) for t in client_seconds)
    # Turned off on resume: config.toml says so, and nothing more is written.
    assert main(["train", "--resume", str(run), "--set", "tensorboard=false", "--quiet"]) == 0
    assert "tensorboard = false" in (run / "config.toml").read_text()
    assert len(list((run / "tensorboard").iterdir())) == 2


def _metrics(value: float) -> dict[str, dict[str, float]]:
    return {kind: {key: value for key in METRIC_KEYS} for kind in EVALUATIONS}


def test_a_resumed_run_hides_the_points_of_a_round_that_never_counted(tmp_path):
    first = TensorBoardLog(tmp_path)
    first.round_start(1, 3, [0])
    first.client_done(1, 0, 1, 0, _metrics(0.25), 1.0)
    first.round_done(1, _metrics(0.25), 1.0)
    first.round_start(2, 3, [0])
    first.client_done(2, 0, 1, 0, _metrics(0.99), 1.0)  # then the process stops: round 2 never counts
    first.close()
    resumed = TensorBoardLog(tmp_path)
    resumed.round_start(2, 3, [0])
    resumed.client_done(2, 0, 1, 0, _metrics(0.5), 1.0)
    resumed.round_done(2, _metrics(0.5), 1.0)
    resumed.close()
    found = scalars(tmp_path)
    assert found["client_0/test_acc"] == [(1, 0.25), (2, 0.5)]
    assert found["round/test_acc"] == [(1, 0.25), (2, 0.5)]


def test_it_changes_no_hash_and_is_checked_only_when_on(tmp_path):
    on = apply_overrides(Config(), {"tensorboard": True})
    assert config_hash(on) == config_hash(Config()) == "ed1663c3ecf2"
    check_tensorboard(Config(), tmp_path / "file" / "run")  # off: nothing checked
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^Cannot write TensorBoard events to .*/file/run/tensorboard: "
                                          r".*/file is a file, not a directory; move it away, or leave "
                                          r"tensorboard off$"):
        check_tensorboard(on, tmp_path / "file" / "run")
    check_tensorboard(on, tmp_path / "new" / "run")  # can be created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # checking wrote nothing


def test_a_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^tensorboard = true needs the tensorboard package: "
                                          r"pip install 'rvepfl\[tensorboard\]'$"):
        check_tensorboard(apply_overrides(Config(), {"tensorboard": True}), tmp_path / "run")
    capsys.readouterr()
    assert main(["train", "--tensorboard", "--method", "fedavg", "--subset", "100", "--clients", "2",
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"error: tensorboard = true needs the tensorboard package: {INSTALL}\n"
    assert not (tmp_path / "run").exists()
