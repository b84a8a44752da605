"""A stolen-model job on several clients (``--client all``, an audit's ``stolen_clients``): its
rows are, client by client, those of the single-client jobs; a stopped job goes on with the next
unfinished client; the settings digest of a job on one client is unchanged; the audit key."""

from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path

import pytest
import torch

from rvepfl.attacks.base import AttackRequest, check_clients, parse_clients
from rvepfl.attacks.registry import attack
from rvepfl.attacks.runner import attack_state, run_attack
from rvepfl.attacks.threat import Target
from rvepfl.errors import ConfigError
from rvepfl.experiments.spec import AttackJob, suite_from_dict
from rvepfl.io import load_tensors
from tests.helpers.suites import toml_text

# FedPer keeps its head private, so each client's stolen model is its own.
TINY_RUN = ["--method", "fedper", "--subset", "600", "--clients", "3", "--rounds", "1", "--local-epochs", "1",
            "--batch-size", "32", "--threads", "1", "--workers", "1", "--quiet"]
FAST = {"iterations": 5, "evaluator_images": 100}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from rvepfl.cli import main

    out = tmp_path_factory.mktemp("fedper") / "run"
    assert main(["train", *TINY_RUN, "--out", str(out)]) == 0
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # wall time, not a score


def _job(target: Target, name: str, out: Path, clients=None, client: int = 0, **request) -> dict:
    chosen = attack(name)
    settings = chosen.resolve(target, AttackRequest(threat="stolen", client=client, clients=clients, **request))
    chosen.open(target, settings)
    return run_attack(target, settings, out)


# -- the jobs ------------------------------------------------------------------------------------
def test_miface_on_every_client_pools_the_single_client_jobs(run, tmp_path):
    target = Target(run)
    out = tmp_path / "all"
    summary = _job(target, "miface", out, "all", restarts=2, **FAST)
    pooled = _rows(out / "scores.csv")
    assert [int(r["client"]) for r in pooled] == [c for c in range(3) for _ in range(10)]
    assert summary["status"] == "complete" and summary["rows"] == 30
    assert list(summary["settings"]["clients"]) == [0, 1, 2]
    assert set(summary["clients"]) == {"0", "1", "2"}
    saved = load_tensors(out / "reconstructions.safetensors", kind="rvepfl-attack-reconstructions")
    assert saved["reconstruction"].shape[0] == 30 and (out / "grid.png").is_file()
    for c in range(3):
        alone = tmp_path / f"client{c}"
        single = _job(target, "miface", alone, client=c, restarts=2, **FAST)
        assert _without_seconds([r for r in pooled if r["client"] == str(c)]) == _without_seconds(
            _rows(alone / "scores.csv"))
        mine = load_tensors(alone / "reconstructions.safetensors", kind="rvepfl-attack-reconstructions")
        assert torch.equal(saved["reconstruction"][10 * c: 10 * (c + 1)], mine["reconstruction"])
        assert summary["clients"][str(c)]["scores"] == single["scores"]
        # the client's part is the single-client job itself, with its digest
        part = json.loads((out / "clients" / f"{c:04d}" / "summary.json").read_text())
        assert part["settings_digest"] == single["settings_digest"]
    correct = [int(r["evaluator_correct"]) for r in pooled]
    assert summary["evaluator_accuracy_on_attacks"] == pytest.approx(sum(correct) / 30)


def test_a_stopped_job_goes_on_with_the_next_unfinished_client(run, tmp_path, monkeypatch):
    target = Target(run)
    chosen = attack("miface")
    settings = chosen.resolve(target, AttackRequest(threat="stolen", clients="all", **FAST))
    out = tmp_path / "job"
    real = type(chosen).invert
    inverted: list[int] = []

    def stop_at_client_2(self, target, settings, *args, **kwargs):
        if settings.client == 2 and len(inverted) < 3:
            inverted.append(-1)
            raise KeyboardInterrupt
        inverted.append(settings.client)
        return real(self, target, settings, *args, **kwargs)

    monkeypatch.setattr(type(chosen), "invert", stop_at_client_2)
    with pytest.raises(KeyboardInterrupt):
        run_attack(target, settings, out)
    assert inverted == [0, 1, -1]
    assert attack_state(out, settings) == "resume"
    assert json.loads((out / "summary.json").read_text())["clients_done"] == [0, 1]
    stamps = {c: (out / "clients" / f"{c:04d}" / "summary.json").stat().st_mtime_ns for c in (0, 1)}
    summary = run_attack(target, settings, out)
    assert inverted == [0, 1, -1, 2]  # clients 0 and 1 are not redone
    assert all((out / "clients" / f"{c:04d}" / "summary.json").stat().st_mtime_ns == stamps[c] for c in (0, 1))
    assert summary["status"] == "complete" and attack_state(out, settings) == "complete"
    assert len(_rows(out / "scores.csv")) == 30
    run_attack(target, settings, out)  # complete: skipped
    assert inverted == [0, 1, -1, 2]


def test_mia_on_every_client_pools_members_and_nonmembers(run, tmp_path):
    from rvepfl.experiments.frontier import _job_sample
    from rvepfl.experiments.stats import AucSample

    target = Target(run)
    out = tmp_path / "all"
    summary = _job(target, "mia", out, [2, 0], references=2)
    assert list(summary["settings"]["clients"]) == [2, 0] and summary["settings"]["images"] == 0
    pooled = _rows(out / "scores.csv")
    for c in (2, 0):
        alone = tmp_path / f"client{c}"
        single = _job(target, "mia", alone, client=c, references=2)
        assert [r for r in pooled if r["client"] == str(c)] == _rows(alone / "scores.csv")
        assert summary["clients"][str(c)]["metrics"] == single["metrics"]
    assert pooled[0]["client"] == "2" and summary["rows"] == len(pooled)
    sample = _job_sample(AttackJob("mia", "stolen"), out / "scores.csv")
    assert isinstance(sample, AucSample) and len(sample.members) + len(sample.nonmembers) == len(pooled)
    assert summary["metrics"]["lira"]["auc"] == pytest.approx(sample.statistic())
    assert (out / "roc.png").is_file()


def test_gmi_on_every_client_pools_the_single_client_jobs(run, tmp_path):
    target = Target(run)
    gmi = {"iterations": 3, "restarts": 2, "evaluator_images": 100,
           "params": {"prior_steps": 5, "prior_images": 500}}
    out = tmp_path / "all"
    summary = _job(target, "gmi", out, "all", **gmi)
    pooled = _rows(out / "scores.csv")
    assert summary["rows"] == 30 and 0.0 <= summary["prior_only_accuracy"] <= 1.0
    alone = tmp_path / "client1"
    _job(target, "gmi", alone, client=1, **gmi)
    assert _without_seconds([r for r in pooled if r["client"] == "1"]) == _without_seconds(
        _rows(alone / "scores.csv"))


# -- the settings ----------------------------------------------------------------------------------
def test_one_client_keeps_its_digest_and_several_change_it(run):
    target = Target(run)
    for name in ("miface", "gmi", "mia"):
        chosen = attack(name)
        today = chosen.resolve(target, AttackRequest(threat="stolen", client=1))
        assert chosen.resolve(target, AttackRequest(threat="stolen", client=0, clients=(1,))) == today
        several = chosen.resolve(target, AttackRequest(threat="stolen", clients="all"))
        assert several.clients == (0, 1, 2) and several.victims == (0, 1, 2)
        assert several.digest() != chosen.resolve(target, AttackRequest(threat="stolen")).digest()
        assert chosen.resolve(target, AttackRequest(threat="stolen", clients=(1, 0, 1))).clients == (1, 0)
    mia = attack("mia").resolve(target, AttackRequest(threat="stolen", clients="all", images=5))
    assert mia.images == 5


@pytest.mark.parametrize(("name", "request_", "message"), [
    ("miface", AttackRequest(threat="released", clients="all"),
     "--client all applies to --threat-model stolen only .*got released"),
    ("mia", AttackRequest(clients=(0, 1)), "--client 0,1 applies to --threat-model stolen only .*got released"),
    ("ig", AttackRequest(clients="all"), "got gradient"),
    ("miface", AttackRequest(threat="stolen", clients=(0, 3)), r"Expected --client between 0 and 2, got 3"),
])
def test_bad_clients_are_one_line(run, name, request_, message):
    with pytest.raises(ConfigError, match=message):
        check_clients(attack(name), request_)
        attack(name).resolve(Target(run), request_)


def test_the_client_option():
    assert parse_clients("2") == (2, None)
    assert parse_clients("All") == (0, "all")
    assert parse_clients("3,1") == (3, (3, 1))
    with pytest.raises(ConfigError, match="Expected --client to be a client's index, all, or indices"):
        parse_clients("some")


# -- the audit key ---------------------------------------------------------------------------------
AUDIT = toml_text(["fedper"], [0]) + """[audit]
attacks = ["miface", "mia"]
"""


def _plan(extra: str = ""):
    return suite_from_dict(tomllib.loads(AUDIT + extra), audit=True).audit


def test_stolen_clients_reach_the_stolen_jobs_only():
    assert _plan().stolen_clients is None
    assert _plan().request(AttackJob("miface", "stolen")).clients is None  # today's jobs, today's numbers
    plan = _plan('stolen_clients = "all"\n')
    assert plan.request(AttackJob("miface", "stolen")).clients == "all"
    assert plan.request(AttackJob("mia", "stolen")).clients == "all"
    assert plan.request(AttackJob("miface", "released")).clients is None
    assert _plan("stolen_clients = [1, 1, 0]\n").stolen_clients == (1, 0)
    assert _plan('stolen_clients = "all"\n').kept_clients(2) == (0, 1)


@pytest.mark.parametrize(("extra", "message"), [
    ('stolen_clients = "some"\n', 'Expected `audit.stolen_clients` to be "all" or a non-empty list of client indices'),
    ("stolen_clients = []\n", "non-empty list"),
    ("stolen_clients = [0, true]\n", "non-empty list"),
    ("stolen_clients = [0, 2]\n", r"Expected `audit.stolen_clients` < 2 \(clients of mnist-fedper-seed0\), got 2"),
])
def test_bad_stolen_clients_are_one_line(extra, message):
    with pytest.raises(ConfigError, match=message):
        _plan(extra)


@pytest.mark.slow
def test_an_audit_attacks_every_clients_stolen_model_in_worker_processes(tmp_path):
    from tests.helpers.suites import finished_suite

    text = toml_text(["fedper"], [0]) + """[audit]
attacks = ["miface", "mia"]
miface_threats = ["stolen"]
mia_threats = ["stolen"]
stolen_clients = "all"
references = 2
evaluator_images = 100
workers = 2
[audit.iterations]
miface = 3
[audit.restarts]
miface = 2
"""
    out = finished_suite(tmp_path, "audit", text)
    attacks = out / "runs" / "mnist-fedper-seed0" / "attacks"
    for job in ("miface-stolen", "mia-stolen"):
        rows = _rows(attacks / job / "scores.csv")
        assert {r["client"] for r in rows} == {"0", "1"}
        summary = json.loads((attacks / job / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["settings"]["clients"] == [0, 1]
        assert summary["rows"] == len(rows)
    with open(out / "audit.csv", newline="") as fh:
        images = {r["attack"]: int(r["images"]) for r in csv.DictReader(fh)}
    assert images["miface"] == 20  # 10 classes x 2 clients


# -- clients that hold the same model ----------------------------------------------------------------
@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory) -> Path:
    from rvepfl.cli import main

    out = tmp_path_factory.mktemp("fedavg") / "run"
    tiny = [*TINY_RUN]
    tiny[tiny.index("fedper")] = "fedavg"
    assert main(["train", *tiny, "--out", str(out)]) == 0
    return out


def _count_inversions(monkeypatch, name: str) -> list[int]:
    """The clients ``name``'s inversions run on from now, in order, in a process with no
    inversion kept from before."""
    from rvepfl.attacks.inversion import InversionAttack

    cls = type(attack(name))
    real = cls.invert
    inverted: list[int] = []

    def counted(self, target, settings, *args, **kwargs):
        inverted.append(settings.client)
        return real(self, target, settings, *args, **kwargs)

    monkeypatch.setattr(cls, "invert", counted)
    InversionAttack._last.clear()
    return inverted


@pytest.mark.parametrize("name, request_", [
    ("miface", {"restarts": 2, **FAST}),
    ("gmi", {"iterations": 3, "restarts": 2, "evaluator_images": 100,
             "params": {"prior_steps": 5, "prior_images": 500}}),
])
def test_clients_with_the_same_model_are_inverted_once_with_the_same_rows(fedavg_run, tmp_path, monkeypatch,
                                                                          name, request_):
    from rvepfl.attacks.inversion import InversionAttack, model_digest

    target = Target(fedavg_run)
    models = [target.model(target.cfg.train.rounds, c) for c in range(3)]
    assert len({model_digest(m) for m in models}) == 1  # FedAvg: every client holds the global model
    inverted = _count_inversions(monkeypatch, name)
    out = tmp_path / "all"
    summary = _job(target, name, out, "all", **request_)
    assert inverted == [0]
    pooled = _rows(out / "scores.csv")
    assert summary["rows"] == 30
    for c in (1, 2):
        part = json.loads((out / "clients" / f"{c:04d}" / "summary.json").read_text())
        assert part["same_model_as_client"] == 0 and part["seconds"] < summary["clients"]["0"]["seconds"]
        assert all(float(r["seconds"]) == 0.0 for r in pooled if r["client"] == str(c))
    saved = load_tensors(out / "reconstructions.safetensors", kind="rvepfl-attack-reconstructions")
    for c in range(3):  # each, inverted alone in a fresh process, gives the same rows and images
        InversionAttack._last.clear()
        alone = tmp_path / f"client{c}"
        _job(target, name, alone, client=c, **request_)
        assert inverted[-1] == c
        assert _without_seconds([r for r in pooled if r["client"] == str(c)]) == _without_seconds(
            _rows(alone / "scores.csv"))
        mine = load_tensors(alone / "reconstructions.safetensors", kind="rvepfl-attack-reconstructions")
        assert torch.equal(saved["reconstruction"][10 * c: 10 * (c + 1)], mine["reconstruction"])


def test_clients_with_their_own_models_are_each_inverted(run, tmp_path, monkeypatch):
    target = Target(run)  # FedPer: each client's head is its own
    inverted = _count_inversions(monkeypatch, "miface")
    summary = _job(target, "miface", tmp_path / "all", "all", **FAST)
    assert inverted == [0, 1, 2]
    assert all("same_model_as_client" not in json.loads((tmp_path / "all" / "clients" / f"{c:04d}" /
                                                         "summary.json").read_text()) for c in range(3))
    assert summary["rows"] == 30
