"""Threat model ``aggregate``: the server's view under secure aggregation, the mean of k clients'
whole-round updates (GitHub issue #29).

k = 1 is the ``update`` view bit for bit; k = 2 is the mean (plain, or weighted by training-split
size) of the two clients' ``update`` views; a run trained with secure aggregation has no
``gradient`` or ``update`` surface, and the audit's row says why; a bad k is one line."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from rvepfl.attacks.base import AttackRequest
from rvepfl.attacks.registry import attack
from rvepfl.attacks.runner import run_attack
from rvepfl.attacks.threat import SECURE_AGGREGATION_REASON, Target
from rvepfl.errors import ConfigError, NoAttackSurface
from rvepfl.experiments.spec import AttackJob, AuditPlan, RunSpec, suite_from_dict
from tests.helpers.suites import toml_text

TINY_RUN = ["--subset", "300", "--clients", "3", "--rounds", "1", "--local-epochs", "1", "--batch-size", "32",
            "--threads", "1", "--workers", "1", "--quiet"]
STEPS = 2

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py


def _train(tmp_path_factory, name: str, *extra: str) -> Path:
    from rvepfl.cli import main

    out = tmp_path_factory.mktemp(name) / "run"
    assert main(["train", *TINY_RUN, *extra, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory) -> Path:
    """FedAvg, 3 clients of equal size, one round, the plain mean."""
    return _train(tmp_path_factory, "fedavg", "--method", "fedavg")


@pytest.fixture(scope="module")
def weighted_run(tmp_path_factory) -> Path:
    """FedAvg on a Dirichlet partition (clients of unequal sizes), aggregated by the weighted mean."""
    return _train(tmp_path_factory, "weighted", "--method", "fedavg", "--partition", "dirichlet",
                  "--set", "train.aggregation=weighted")


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory) -> Path:
    """FedAvg trained with secure aggregation."""
    return _train(tmp_path_factory, "secure", "--method", "fedavg", "--set", "secure_aggregation.enabled=true")


def _update(target: Target, client: int, draw: int = 0, batch: int = 2):
    r = target.default_round()
    x, gt = target.client_batch(client, batch, draw, 0)
    obs = target.observe_update(r, client, x, gt.labels, local_steps=STEPS, seed=0, draw=draw)
    return x, gt, obs


def _aggregate(target: Target, clients: tuple[int, ...], draw: int = 0, batch: int = 2):
    r = target.default_round()
    parts = [(c, *target.client_batch(c, batch, draw, 0)) for c in clients]
    return target.observe_aggregate(r, [(c, x, gt.labels) for c, x, gt in parts], local_steps=STEPS, seed=0,
                                    draw=draw)


# -- the view -------------------------------------------------------------------------------------
def test_one_client_is_the_update_view_bit_for_bit(fedavg_run):
    target = Target(fedavg_run)
    for client in (0, 2):
        _, _, update = _update(target, client)
        one = _aggregate(target, (client,))
        assert one.batch_size == update.batch_size == 2
        assert all(torch.equal(a, b) for a, b in zip(one.gradients, update.gradients))
        assert one.bounds == update.bounds and one.input_shape == update.input_shape


def test_two_clients_are_the_mean_of_their_update_views(fedavg_run):
    target = Target(fedavg_run)
    assert target.sum_clients(target.default_round(), 0, 2) == (0, 1)
    _, _, first = _update(target, 0)
    _, _, second = _update(target, 1)
    both = _aggregate(target, (0, 1))
    assert both.batch_size == 4
    # the views are float32 roundings of float64 updates: their mean agrees to float32 rounding
    for a, b, mean in zip(first.gradients, second.gradients, both.gradients):
        assert torch.allclose(mean, (a.double() + b.double()).div(2).float(), rtol=1e-6, atol=1e-6)
    # the mean is not either client's view alone
    assert not all(torch.allclose(a, m) for a, m in zip(first.gradients, both.gradients))


def test_weighted_aggregation_weighs_each_update_by_its_training_split(weighted_run):
    target = Target(weighted_run)
    assert target.cfg.train.aggregation == "weighted"
    sizes = [len(target.fed.partition.clients[c].train) for c in (0, 1)]
    assert sizes[0] != sizes[1]  # otherwise the weights would be equal and the test would mean nothing
    assert target.sum_weights((0, 1)) == pytest.approx([s / sum(sizes) for s in sizes])
    _, _, first = _update(target, 0)
    _, _, second = _update(target, 1)
    both = _aggregate(target, (0, 1))
    w0, w1 = (s / sum(sizes) for s in sizes)
    for a, b, mean in zip(first.gradients, second.gradients, both.gradients):
        assert torch.allclose(mean, (w0 * a.double() + w1 * b.double()).float(), rtol=1e-6, atol=1e-6)
        if a.numel() > 1 and not torch.allclose(a, b):
            plain = (a.double() + b.double()).div(2).float()
            assert not torch.allclose(mean, plain, rtol=1e-6, atol=1e-6)


def test_the_clients_in_the_sum_follow_the_victim_and_wrap_around(fedavg_run):
    target = Target(fedavg_run)
    r = target.default_round()
    assert target.sum_clients(r, 2, 2) == (2, 0)
    assert target.sum_clients(r, 1, 3) == (1, 2, 0)
    assert target.sum_clients(r, 1, 1) == (1,)


# -- the attack -----------------------------------------------------------------------------------
def test_ig_under_aggregate_scores_every_image_of_every_sum(fedavg_run, tmp_path):
    target = Target(fedavg_run)
    chosen = attack("ig")
    assert "aggregate" in chosen.threats
    assert "aggregate" not in attack("dlg").threats and "aggregate" not in attack("idlg").threats
    settings = chosen.resolve(target, AttackRequest(threat="aggregate", client=1, clients_in_sum=2, images=2,
                                                    iterations=3, local_steps=STEPS, evaluator_images=100))
    assert settings.clients_in_sum == 2 and settings.local_steps == STEPS
    chosen.open(target, settings)
    summary = run_attack(target, settings, tmp_path / "k2")
    with open(tmp_path / "k2" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert summary["rows"] == len(rows) == 4  # 2 sums of 2 clients x 1 image
    assert [r["client"] for r in rows] == ["1", "2", "1", "2"]
    assert [r["draw"] for r in rows] == ["0", "0", "1", "1"]
    for draw in (0, 1):  # each client's image is the one an attack on it alone would draw
        for client in (1, 2):
            _, gt = target.client_batch(client, 1, draw, 0)
            row = next(r for r in rows if r["draw"] == str(draw) and r["client"] == str(client))
            assert int(row["image"]) == gt.indices[0] and int(row["label"]) == int(gt.labels[0])
    assert summary["threat_model"]["name"] == "aggregate"
    assert summary["settings"]["clients_in_sum"] == 2


def test_k1_attack_has_the_update_attacks_numbers(fedavg_run, tmp_path):
    target = Target(fedavg_run)
    chosen = attack("ig")
    rows = {}
    for threat, k in (("update", None), ("aggregate", 1)):
        settings = chosen.resolve(target, AttackRequest(threat=threat, client=0, images=2, iterations=3,
                                                        local_steps=STEPS, evaluator_images=100, clients_in_sum=k))
        run_attack(target, settings, tmp_path / threat)
        with open(tmp_path / threat / "scores.csv", newline="") as fh:
            rows[threat] = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]
    assert rows["aggregate"] == rows["update"]


def test_the_digest_of_the_other_threat_models_is_unchanged(fedavg_run):
    target = Target(fedavg_run)
    settings = attack("ig").resolve(target, AttackRequest(threat="update", images=1, iterations=3))
    assert settings.clients_in_sum == 0
    fields = dataclasses.asdict(settings)  # the digest as it was before `clients_in_sum` existed
    for key, empty in (("references", 0), ("params", None), ("clients", ()), ("clients_in_sum", 0)):
        assert fields.pop(key) == empty
    before = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert settings.digest() == before
    k2 = attack("ig").resolve(target, AttackRequest(threat="aggregate", images=1, iterations=3))
    assert k2.clients_in_sum == 2  # the default
    k3 = attack("ig").resolve(target, AttackRequest(threat="aggregate", images=1, iterations=3, clients_in_sum=3))
    assert len({settings.digest(), k2.digest(), k3.digest()}) == 3


# -- secure aggregation -----------------------------------------------------------------------------
def test_secure_aggregation_leaves_no_per_client_surface(secure_run, tmp_path):
    target = Target(secure_run)
    assert target.secure_aggregation()
    chosen = attack("ig")
    for threat in ("gradient", "update"):
        settings = chosen.resolve(target, AttackRequest(threat=threat, images=1, iterations=3))  # no error here
        with pytest.raises(NoAttackSurface, match="secure aggregation") as caught:
            chosen.open(target, settings)
        assert str(caught.value) == SECURE_AGGREGATION_REASON and "\n" not in str(caught.value)
    x, gt = target.client_batch(0, 1, 0, 0)
    with pytest.raises(NoAttackSurface, match="only the round's aggregate"):
        target.observe_gradient(target.default_round(), 0, x, gt.labels, 0, 0)
    with pytest.raises(NoAttackSurface, match="only the round's aggregate"):
        target.observe_update(target.default_round(), 0, x, gt.labels, local_steps=1, seed=0, draw=0)
    settings = chosen.resolve(target, AttackRequest(threat="aggregate", images=1, iterations=3,
                                                    evaluator_images=100))
    chosen.open(target, settings)  # the aggregate is what the server saw
    assert run_attack(target, settings, tmp_path / "aggregate")["rows"] == 2


def test_a_private_head_has_no_aggregate_surface(tmp_path_factory):
    target = Target(_train(tmp_path_factory, "fedper", "--method", "fedper"))
    settings = attack("ig").resolve(target, AttackRequest(threat="aggregate", images=1, iterations=3))
    with pytest.raises(NoAttackSurface, match="keeps part of the path from input to logits private"):
        attack("ig").open(target, settings)
    x, gt = target.client_batch(0, 1, 0, 0)
    with pytest.raises(NoAttackSurface, match="keeps part of the path from input to logits private"):
        target.observe_aggregate(target.default_round(), [(0, x, gt.labels)], local_steps=1, seed=0, draw=0)


def test_the_audit_says_why_a_secure_run_has_no_gradient_surface(secure_run, tmp_path):
    from rvepfl.experiments.runner import attack_run

    target = Target(secure_run)
    spec = RunSpec(1, "mnist", "fedavg", 0, target.cfg)
    shutil.copytree(secure_run, tmp_path / "runs" / spec.label)
    plan = AuditPlan(("ig",), {"ig": ("gradient", "update", "aggregate")}, 0, 1, 1, 100, 0, {"ig": 2})
    rows = {job.threat: (row, table) for job, row, table, _ in attack_run(spec, plan, tmp_path, 0.5, lambda _: None,
                                                                          None)}
    for threat in ("gradient", "update"):
        row, table = rows[threat]
        assert table is None and row["images"] == 0 and row["note"] == SECURE_AGGREGATION_REASON
    row, table = rows["aggregate"]
    assert table is not None and row["images"] == 2 and row["note"] == ""


def test_an_audit_runs_aggregate_only_where_asked():
    def plan(extra: str):
        values = tomllib.loads(toml_text(["fedavg"], [0]) + '\n[audit]\nattacks = ["ig"]\n' + extra)
        return suite_from_dict(values, audit=True).audit

    assert plan("").jobs() == (AttackJob("ig", "gradient"),)
    assert plan('update_attacks = ["ig"]\n').jobs() == (AttackJob("ig", "gradient"), AttackJob("ig", "update"))
    asked = plan('ig_threats = ["gradient", "aggregate"]\nlocal_steps = 3\n')
    assert asked.jobs() == (AttackJob("ig", "gradient"), AttackJob("ig", "aggregate"))
    assert asked.request(AttackJob("ig", "aggregate")).local_steps == 3


# -- bad input --------------------------------------------------------------------------------------
BAD_K = "Expected --clients-in-sum between 1 and 3 (the clients of round 1), got {}"


@pytest.mark.parametrize("request_, message", [
    ({"threat": "aggregate", "clients_in_sum": 0}, BAD_K.format(0)),
    ({"threat": "aggregate", "clients_in_sum": 4}, BAD_K.format(4)),
    ({"threat": "update", "clients_in_sum": 2}, "--clients-in-sum applies to --threat-model aggregate only, got "
                                                "--threat-model update"),
    ({"threat": "aggregate", "local_steps": 0}, "Expected --local-steps >= 1, got 0"),
])
def test_a_bad_aggregate_request_is_one_line(fedavg_run, request_, message):
    target = Target(fedavg_run)
    with pytest.raises(ConfigError) as caught:
        attack("ig").resolve(target, AttackRequest(images=1, iterations=3, **request_))
    assert str(caught.value) == message
    with pytest.raises(ConfigError, match="--clients-in-sum applies to --threat-model aggregate only"):
        attack("miface").resolve(target, AttackRequest(threat="released", clients_in_sum=2))
    with pytest.raises(ConfigError, match="dlg inverts an observed upload"):
        attack("dlg").resolve(target, AttackRequest(threat="aggregate"))


def test_a_bad_k_on_the_command_line_is_one_line_and_writes_nothing(fedavg_run, capsys):
    from rvepfl.cli import main

    before = sorted(p.name for p in (fedavg_run / "attacks").glob("*")) if (fedavg_run / "attacks").exists() else []
    code = main(["attack", "ig", "--run", str(fedavg_run), "--threat-model", "aggregate", "--clients-in-sum", "4",
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err == f"error: {BAD_K.format(4)}"
    after = sorted(p.name for p in (fedavg_run / "attacks").glob("*")) if (fedavg_run / "attacks").exists() else []
    assert after == before
