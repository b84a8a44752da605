"""Untrusted clients: every upload validated by the server loop (both engines), robust aggregation
(coordinate-wise median and trimmed mean, a bound on each update), and one malicious client of
five: NaN, a wrong shape or its encoder are rejected and the run completes; a scaled or
sign-flipped update is what robust aggregation absorbs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rvepfl.config import Config, apply_overrides, config_hash
from rvepfl.errors import ConfigError
from rvepfl.fl.client import ClientOutcome, prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.fl.validation import check_outcome, refusal
from rvepfl.maths.aggregate import mean_state, median_state, trimmed_mean_state
from rvepfl.methods import Upload
from rvepfl.rundir import RunDir
from tests.helpers import adversary
from tests.helpers.methods import tiny_cfg

GOOD = {"general": {"loss": 1.0, "acc": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}}
GOOD = {kind: dict(GOOD["general"]) for kind in ("general", "train", "test")}


# -- validation ----------------------------------------------------------------------------------
def _outcome(state, *, client=1, num_samples=10, metrics=None, steps=3, seconds=1.0):
    return ClientOutcome(Upload(client, num_samples, state), metrics or GOOD, steps, seconds, seconds)


EXPECTED = {"classifier.w": torch.zeros(2, 3), "classifier.b": torch.zeros(3)}


@pytest.mark.parametrize("change, reason", [
    (lambda s: {**s, "encoder.fc.weight": torch.zeros(4)},
     r"^it sent entries the method does not share: encoder\.fc\.weight$"),
    (lambda s: {**s, "encoder.fc.weight": torch.zeros(2, 3)}, r"does not share: encoder\.fc\.weight"),
    (lambda s: {"classifier.w": s["classifier.w"]}, r"^its upload lacks shared entries: classifier\.b$"),
    (lambda s: {**s, "classifier.b": torch.zeros(4)}, r"^`classifier\.b` has shape \(4,\) torch\.float32, the global"),
    (lambda s: {**s, "classifier.b": torch.zeros(3, dtype=torch.float64)}, r"torch\.float64, the global state's is"),
    (lambda s: {**s, "classifier.b": torch.tensor([0.0, float("inf"), float("nan")])},
     r"^`classifier\.b` holds 2 NaN or infinite values$"),
    (lambda s: {**s, "classifier.b": [0.0, 0.0, 0.0]}, r"^`classifier\.b` is a list, not a tensor$"),
])
def test_an_upload_that_does_not_fit_the_global_state_is_refused(change, reason):
    import re

    state = {k: v.clone() for k, v in EXPECTED.items()}
    assert refusal(EXPECTED, state) is None
    why = refusal(EXPECTED, change(state))
    assert why is not None and re.search(reason, why), why


@pytest.mark.parametrize("kwargs, reason", [
    ({"client": 2}, "its upload names client 2"),
    ({"num_samples": 0}, "it claims 0 training samples, not a whole number >= 1"),
    ({"num_samples": True}, "it claims True training samples"),
    ({"num_samples": 11}, "it claims 11 training samples, its split holds 10"),
    ({"metrics": {**GOOD, "test": {**GOOD["test"], "acc": float("nan")}}}, "its test metric `acc` is nan"),
    ({"metrics": {"train": GOOD["train"], "test": GOOD["test"]}}, "its metrics lack the general evaluation"),
    ({"steps": 4}, "it reports 4 local steps, the method planned 3"),
    ({"seconds": float("nan")}, "its train seconds are nan"),
])
def test_an_outcome_with_bad_facts_is_refused(kwargs, reason):
    state = {k: v.clone() for k, v in EXPECTED.items()}
    assert check_outcome(_outcome(state), client=1, expected=EXPECTED, max_samples=10, planned_steps=3) is None
    client = 1
    why = check_outcome(_outcome(state, **kwargs), client=client, expected=EXPECTED, max_samples=10, planned_steps=3)
    assert why is not None and why.startswith(reason), why


# -- robust aggregation: golden values ----------------------------------------------------------------
def _states(values):
    return [{"w": torch.tensor(v, dtype=torch.float32)} for v in values]


def test_median_and_trimmed_mean_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 5)).astype(np.float32)
    values[3] *= 1e4  # one outlier client
    states = _states(values.tolist())
    np.testing.assert_allclose(median_state(states)["w"].numpy(), np.median(values.astype(np.float64), axis=0),
                               rtol=1e-6)
    kept = np.sort(values.astype(np.float64), axis=0)[1:-1]  # 0.2 of 7 clients: one cut at each end
    np.testing.assert_allclose(trimmed_mean_state(states, 0.2)["w"].numpy(), kept.mean(axis=0), rtol=1e-6)
    even = _states(values[:4].tolist())
    np.testing.assert_allclose(median_state(even)["w"].numpy(), np.median(values[:4].astype(np.float64), axis=0),
                               rtol=1e-6)


def test_golden_values_of_the_aggregators():
    states = _states([[1.0, 10.0], [2.0, -10.0], [3.0, 0.0], [4.0, 5.0], [1000.0, 1.0]])
    assert median_state(states)["w"].tolist() == [3.0, 1.0]
    assert trimmed_mean_state(states, 0.2)["w"].tolist() == [3.0, 2.0]  # (2+3+4)/3, (0+1+5)/3
    assert mean_state(states)["w"].tolist() == [202.0, 1.2000000476837158]


def test_one_outlier_of_five_cannot_move_the_median_or_trimmed_mean_outside_the_honest_values():
    """Whatever one client sends (scaled, sign-flipped, huge), every coordinate of the median and
    of the 0.2-trimmed mean of five stays within the four honest values' range."""
    rng = np.random.default_rng(1)
    honest = rng.normal(size=(4, 50))
    for outlier in (1e4 * honest[0], -honest[0], np.full(50, 1e30), rng.normal(size=50) * 100):
        states = _states(np.vstack([honest, outlier]).tolist())
        low, high = honest.min(axis=0) - 1e-6, honest.max(axis=0) + 1e-6
        for robust in (median_state(states)["w"].numpy(), trimmed_mean_state(states, 0.2)["w"].numpy()):
            assert np.all((low <= robust) & (robust <= high))
        assert np.any(np.abs(mean_state(states)["w"].numpy() - honest.mean(axis=0)) > 0.1)


def test_aggregators_refuse_bad_input():
    with pytest.raises(ValueError, match=r"Expected `fraction` in \[0, 0\.5\)"):
        trimmed_mean_state(_states([[1.0]]), 0.5)
    with pytest.raises(ValueError, match="has shape"):
        median_state([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


# -- settings --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, match", [
    ({"train.trim_fraction": 0.5}, r"^Expected `train\.trim_fraction` in \[0, 0\.5\), got 0\.5$"),
    ({"train.max_update_norm": -1.0},
     r"^Expected `train\.max_update_norm` > 0 \(leave it out for no bound\), got -1\.0$"),
    ({"train.max_update_norm": 0}, r"^Expected `train\.max_update_norm` > 0 \(leave it out for no bound\), got 0\.0$"),
    ({"train.max_update_norm": "big"}, r"^Expected `train\.max_update_norm` to be a number, got 'big'$"),
    ({"train.aggregation": "krum"}, r"to be one of 'mean', 'weighted', 'median', 'trimmed-mean'"),
])
def test_bad_robustness_settings_are_one_line_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(Config(), overrides)


def test_dp_fedavg_refuses_robust_aggregation():
    with pytest.raises(ConfigError, match=r"dp-fedavg's server takes the noised mean of the clipped updates"):
        prepare(tiny_cfg("dp-fedavg", **{"train.aggregation": "median"}))


def test_the_new_settings_at_their_defaults_leave_every_hash_as_it_was():
    assert config_hash(Config()) == "ed1663c3ecf2"  # this config's hash before the settings existed
    assert config_hash(apply_overrides(Config(), {"train.aggregation": "median"})) != config_hash(Config())
    assert config_hash(apply_overrides(Config(), {"train.max_update_norm": 5.0})) != config_hash(Config())


# -- one malicious client of five, in process ------------------------------------------------------------
def _rows(run: Path, name: str) -> list[dict[str, str]]:
    with open(run / "metrics" / name, newline="") as fh:
        return list(csv.DictReader(fh))


def _run(path: Path, method: str, kind: str | None, monkeypatch, **overrides) -> RunDir:
    if kind is not None:
        with monkeypatch.context() as patch:
            import rvepfl.fl.client as client_side

            patch.setattr(client_side, "train_client", client_side.train_client)  # restored on exit
            adversary.install(3, kind)
            return _train(path, method, **overrides)
    return _train(path, method, **overrides)


def _train(path: Path, method: str, **overrides) -> RunDir:
    cfg = tiny_cfg(method, **{"data.subset": 500, "data.num_clients": 5, "faults.min_clients": 4, **overrides})
    fed = prepare(cfg)
    run = RunDir(path)
    initialise(fed, run)
    train(fed, run)
    return run


@pytest.mark.parametrize("method, kind", [("fedavg", "nan"), pytest.param("fedavg", "shape", marks=pytest.mark.slow),
                                          pytest.param("rvepfl", "encoder", marks=pytest.mark.slow)])
def test_a_bad_upload_is_rejected_and_the_run_completes_with_the_honest_clients(tmp_path, monkeypatch, method, kind):
    run = _run(tmp_path / "run", method, kind, monkeypatch)
    failures = _rows(run.path, "client_failures.csv")
    assert [(f["Round#"], f["client#"], f["Failure"]) for f in failures] == [("1", "3", "rejected"),
                                                                             ("2", "3", "rejected")]
    expected = {"nan": "NaN or infinite", "shape": "has shape", "encoder": "does not share: encoder."}[kind]
    assert all(f["Message"].startswith("upload refused: ") and expected in f["Message"] for f in failures)
    assert [r["Clients"] for r in _rows(run.path, "round_timing.csv")] == ["4", "4"]
    assert json.loads(run.summary.read_text())["status"] == "complete"
    state = load_file(run.global_checkpoint(2))
    assert all(torch.isfinite(v).all() for v in state.values()) and not any(k.startswith("encoder.") for k in state)
    # Nothing of the rejected client's rounds counted: it has no private state to export.
    if method == "rvepfl":
        assert not (run.round_dir(2) / "clients" / "0003.safetensors").exists()
        assert (run.round_dir(2) / "clients" / "0002.safetensors").exists()


def test_without_tolerance_a_rejected_upload_stops_the_round_with_one_line(tmp_path, monkeypatch):
    from rvepfl.errors import RoundFailedError

    with pytest.raises(RoundFailedError,
                       match=r"^Round 1: client 3 failed \(rejected: upload refused: `.*` holds 1 NaN"):
        _run(tmp_path / "run", "fedavg", "nan", monkeypatch, **{"faults.min_clients": 0})


def _distance(a: RunDir, b: RunDir, round_: int = 2) -> float:
    x, y = load_file(a.global_checkpoint(round_)), load_file(b.global_checkpoint(round_))
    return float(torch.sqrt(sum(((x[k].double() - y[k].double()) ** 2).sum() for k in x)))


@pytest.mark.slow
def test_robust_aggregation_absorbs_a_scaled_update(tmp_path, monkeypatch):
    """Against the clean run's global state after one round: one update scaled by 1e4 pulls the
    mean far off; the median and the trimmed mean stay where the honest clients put them."""
    distance = {}
    for aggregation in ("mean", "median", "trimmed-mean"):
        settings = {"train.aggregation": aggregation, "train.rounds": 1}
        clean = _run(tmp_path / f"clean-{aggregation}", "fedavg", None, monkeypatch, **settings)
        attacked = _run(tmp_path / f"scale-{aggregation}", "fedavg", "scale", monkeypatch, **settings)
        distance[aggregation] = _distance(clean, attacked, 1)
        assert _rows(attacked.path, "client_failures.csv") == []  # a well-formed upload: not rejected
    assert distance["mean"] > 100
    assert distance["median"] < distance["mean"] / 100 and distance["trimmed-mean"] < distance["mean"] / 100


@pytest.mark.slow
def test_a_bound_on_each_update_caps_what_one_client_moves(tmp_path, monkeypatch):
    bound = {"train.max_update_norm": 1.0, "train.rounds": 1}
    clean = _run(tmp_path / "clean", "fedavg", None, monkeypatch, **bound)
    scaled = _run(tmp_path / "scaled", "fedavg", "scale", monkeypatch, **bound)
    unbounded = _run(tmp_path / "unbounded", "fedavg", "scale", monkeypatch, **{"train.rounds": 1})
    # Each update is at most 1 long, so the one client that differs moves the mean of five by at
    # most 2/5 (its two bounded updates point the same way here).
    assert 0 < _distance(clean, scaled, 1) <= 2 / 5 + 1e-5
    assert _distance(clean, unbounded, 1) > 100


# -- the same on Flower (the ServerApp and ClientApps over an in-process Grid) ----------------------------
@pytest.mark.parametrize("method, kind", [("fedavg", "nan"), pytest.param("fedavg", "shape", marks=pytest.mark.slow),
                                          pytest.param("fedavg", "encoder", marks=pytest.mark.slow)])
def test_flower_rejects_a_misbehaving_clientapp(tmp_path, monkeypatch, method, kind):
    from tests.helpers.flower import InProcessGrid, need_flwr

    need_flwr()
    from rvepfl.flower.appconfig import run_config
    from rvepfl.flower.server import FlowerServer

    cfg = tiny_cfg(method, **{"data.subset": 500, "data.num_clients": 5, "faults.min_clients": 4,
                              "train.rounds": 1})
    nodes = {100 + i: {"partition-id": i, "num-partitions": 5, "state-dir": str(tmp_path / f"node{i}")}
             for i in range(5)}
    grid = InProcessGrid(nodes)
    grid.run_config = run_config(cfg, out=str(tmp_path / "run"))
    import rvepfl.fl.client as client_side

    monkeypatch.setattr(client_side, "train_client", client_side.train_client)
    adversary.install(3, kind)
    summary = FlowerServer(grid, cfg, RunDir(tmp_path / "run"), wait_nodes=5, log=lambda line: None,
                           poll=0).run_federation()
    assert summary["status"] == "complete"
    failures = _rows(tmp_path / "run", "client_failures.csv")
    assert [(f["client#"], f["Failure"]) for f in failures] == [("3", "rejected")]
    expected = {"nan": "NaN or infinite", "shape": "has shape", "encoder": "does not share: encoder."}[kind]
    assert failures[0]["Message"].startswith("upload refused: ") and expected in failures[0]["Message"]
    state = load_file(RunDir(tmp_path / "run").global_checkpoint(1))
    assert all(torch.isfinite(v).all() for v in state.values())
    assert set(state) == set(prepare(cfg).method.shared_state(prepare(cfg).method.build_model()))
