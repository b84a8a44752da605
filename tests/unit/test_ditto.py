"""Ditto (rvepfl/methods/ditto.py): its model split, its two phases of local training, its
settings, and the method end to end: in process, on Flower (an in-process Grid), composed with a
mechanism, in a comparison and an audit."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from rvepfl import registry
from rvepfl.attacks.threat import Target
from rvepfl.cli import main
from rvepfl.config import Config, apply_overrides, dumps_config
from rvepfl.errors import ConfigError, NoAttackSurface
from rvepfl.fl.client import prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.methods import DataSpec, RoundContext
from rvepfl.rundir import PUBLISHED_CSVS, RunDir
from tests.helpers.methods import random_data, tiny_cfg
from tests.helpers.suites import finished_suite, toml_text


def ditto(**overrides):
    cfg = tiny_cfg("ditto", **overrides)
    return registry.method_class("ditto")(cfg, DataSpec(1, 8, 10, (64, 64)))


def test_ditto_is_registered_with_its_settings():
    assert "ditto" in registry.methods()
    assert registry.method_class("ditto").sections() == {"ditto": registry.sections()["ditto"]}
    assert Config().ditto.lam == 0.1 and Config().ditto.personal_epochs == 0
    assert "[ditto]" in dumps_config(apply_overrides(Config(), {"method": "ditto"}))


@pytest.mark.parametrize("key, value, match", [
    ("ditto.lam", -0.5, r"^Expected `ditto.lam` >= 0, got -0.5$"),
    ("ditto.personal_epochs", -1, r"^Expected `ditto.personal_epochs` >= 0 \(0: train.local_epochs\), got -1$"),
])
def test_bad_settings_are_one_line_errors(key, value, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(Config(), {"method": "ditto", key: value})


def test_the_global_model_is_shared_and_the_personal_model_private():
    method = ditto()
    model = method.build_model()
    shared, private = method.shared_state(model), method.private_state(model)
    assert shared and private and all(k.startswith("global_model.") for k in shared)
    assert all(k.startswith("personal.") for k in private)
    # Both start from the same weights; predictions are the personal model's.
    for key, value in private.items():
        assert torch.equal(value, shared["global_model." + key.removeprefix("personal.")])
    x = torch.randn(3, 1, 8, 8)
    model.personal.out.bias.data += 1.0
    assert torch.equal(model.eval()(x), model.personal(x))


def _round(method, lam_anchor: bool = False):
    torch.manual_seed(0)
    model = method.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = RoundContext(round=1, client=0, seed=0)
    steps = method.local_train(model, random_data(64, 8), ctx, 0)
    return model, before, steps


def test_local_training_trains_both_models_and_counts_both_phases():
    method = ditto(**{"train.local_epochs": 2, "ditto.personal_epochs": 3})
    model, before, steps = _round(method)
    assert steps == method.planned_steps(64) == (2 + 3) * 2  # 64 images, batch 32
    after = model.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("global_model."))
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("personal."))
    assert all(p.requires_grad for p in model.parameters())  # each phase restored the other's flags


def test_personal_epochs_zero_means_as_many_as_the_global_models():
    assert ditto(**{"train.local_epochs": 2}).planned_steps(64) == (2 + 2) * 2


def test_lambda_pulls_the_personal_model_towards_the_global_state_received():
    """With a huge lambda the personal model stays near the global state the round started from;
    with lambda = 0 it moves freely."""
    distance = {}
    for lam in (0.0, 1e4):
        model, before, _ = _round(ditto(**{"ditto.lam": lam, "ditto.personal_epochs": 2}))
        start = {k.removeprefix("global_model."): v for k, v in before.items() if k.startswith("global_model.")}
        distance[lam] = sum(float((p.detach() - start[k]).pow(2).sum())
                            for k, p in model.personal.named_parameters())
    assert distance[1e4] < distance[0.0] / 10


@pytest.mark.slow
def test_ditto_trains_end_to_end_and_in_process_equals_flower(tmp_path):
    from tests.helpers.flower import InProcessGrid, need_flwr

    need_flwr()
    from rvepfl.flower.appconfig import run_config
    from rvepfl.flower.server import FlowerServer

    cfg = tiny_cfg("ditto", **{"data.subset": 200})
    fed = prepare(cfg)
    initialise(fed, RunDir(tmp_path / "ref"))
    summary = train(fed, RunDir(tmp_path / "ref"))
    assert summary["status"] == "complete" and summary["method"] == "ditto"
    assert summary["parameters"]["shared"] == summary["parameters"]["private_per_client"]

    nodes = {100 + i: {"partition-id": i, "num-partitions": 2, "state-dir": str(tmp_path / f"node{i}")}
             for i in range(2)}
    grid = InProcessGrid(nodes)
    grid.run_config = run_config(cfg, out=str(tmp_path / "flower"))
    flower = FlowerServer(grid, cfg, RunDir(tmp_path / "flower"), wait_nodes=5, log=lambda line: None, poll=0)
    flower.run_federation()
    for name in PUBLISHED_CSVS:
        ref = (tmp_path / "ref" / "metrics" / name).read_bytes()
        assert (tmp_path / "flower" / "metrics" / name).read_bytes() == ref
    received = json.loads((tmp_path / "flower" / "flower" / "received.json").read_text())
    for entry in (e for e in received if e["type"] == "train"):
        assert all(k.startswith("global_model.") for k in entry["records"]["upload"]["arrays"])


@pytest.mark.slow
def test_ditto_composes_with_a_mechanism_and_refuses_dp_sgd(tmp_path):
    run = tmp_path / "composed"
    assert main(["train", "--method", "ditto+nbafl", "--subset", "200", "--clients", "2", "--rounds", "1",
                 "--local-epochs", "1", "--batch-size", "32", "--workers", "1", "--threads", "1", "--quiet",
                 "--out", str(run)]) == 0
    details = json.loads((run / "summary.json").read_text())["method_details"]
    assert details["sigma_u"] > 0
    with pytest.raises(ConfigError, match=r"^dp-sgd cannot wrap ditto: .*phases of its own$"):
        apply_overrides(Config(), {"method": "ditto+dp-sgd"})


SUITE = toml_text(["ditto", "fedavg"], [0], name="ditto-suite") + """
[audit]
attacks = ["ig", "miface"]
miface_threats = ["released", "stolen"]
update_attacks = ["ig"]
images = 1
evaluator_images = 500
[audit.iterations]
ig = 3
miface = 3
"""


@pytest.mark.slow
def test_ditto_in_an_audit_has_every_attack_surface(tmp_path):
    """The global model reads images, so Ditto has a gradient (and update) surface and a released
    model that classifies; a stolen model is the client's personal model. Its observed round trains
    the personal model too, after the global model's steps."""
    out = finished_suite(tmp_path, "audit", SUITE)
    with open(out / "audit.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == "ditto"]
    assert {(r["attack"], r["threat"]) for r in rows} == {("ig", "gradient"), ("ig", "update"),
                                                           ("miface", "released"), ("miface", "stolen")}
    assert all(int(r["images"]) > 0 and r["note"] == "" for r in rows)
    target = Target(out / "runs" / "mnist-ditto-seed0")
    released, bounds = target.inversion_model("released", 1, 0)
    assert released is target.model(1, None).global_model and bounds is not None
    stolen, _ = target.inversion_model("stolen", 1, 0)
    assert stolen is target.model(1, 0)
    try:
        target.gradient_surface(1, 0)
    except NoAttackSurface:  # pragma: no cover - the assertion below says what went wrong
        pytest.fail("Ditto's global model should be a gradient surface")
