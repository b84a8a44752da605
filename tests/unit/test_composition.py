"""Methods and mechanisms: the registry, compositions (METHOD+MECHANISM), settings sections, the
config hash, and RVE-PFL with NbAFL's noise on its classifier, end to end."""

from __future__ import annotations

import json

import pytest
import torch

from rvepfl import registry
from rvepfl.attacks.threat import Target
from rvepfl.config import Config, apply_overrides, config_hash, dumps_config, legacy_config_hash
from rvepfl.errors import ConfigError
from rvepfl.fl.client import prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.maths import add_gaussian_noise, clip_by_l2
from rvepfl.mechanisms.base import Mechanism
from rvepfl.methods import DataSpec, RoundContext
from rvepfl.rundir import PUBLISHED_CSVS, RunDir
from rvepfl.seeding import seed_torch, torch_generator
from rvepfl.wire import observed_gradient
from tests.helpers.methods import tiny_cfg


# -- the registry ----------------------------------------------------------------------------------
def test_methods_and_mechanisms_are_found_in_their_packages():
    assert list(registry.methods())[:4] == ["rvepfl", "fedavg", "fedper", "fedrep"]
    assert list(registry.mechanisms()) == ["nbafl", "dp-fedavg", "dp-sgd"]
    assert registry.available_methods() == [*registry.methods(), *registry.mechanisms()]
    assert all(issubclass(m, Mechanism) for m in registry.mechanisms().values())
    assert {"model", "personal", "nbafl", "dp_fedavg", "dp_sgd"} <= set(registry.sections())


@pytest.mark.parametrize("name", ["nbafl", "dp-fedavg", "dp-sgd"])
def test_a_mechanism_alone_is_the_mechanism_on_fedavg(name):
    cls = registry.method_class(name)
    assert cls.__bases__ == (registry.mechanisms()[name], registry.methods()["fedavg"])
    assert cls.name == name
    assert registry.method_class(f"fedavg+{name}").__bases__ == cls.__bases__


def test_a_composition_reads_the_sections_of_both():
    assert list(registry.method_class("rvepfl+nbafl").sections()) == ["model", "nbafl"]
    assert list(registry.method_class("fedrep+dp-fedavg").sections()) == ["personal", "dp_fedavg"]
    assert list(registry.method_class("fedavg").sections()) == []


@pytest.mark.parametrize("spec, match", [
    ("fedsgd", r"^Unknown method 'fedsgd': choose one of rvepfl, fedavg, fedper, fedrep"),
    ("rvepfl+laplace",
     r"^Unknown mechanism 'laplace' in method 'rvepfl\+laplace': choose one of nbafl, dp-fedavg, dp-sgd$"),
    ("nbafl+rvepfl", r"^Expected METHOD\+MECHANISM with a method first"),
    ("rvepfl+nbafl+dp-sgd", r"^dp-sgd cannot wrap rvepfl\+nbafl: it clips and noises every parameter's gradient"),
    ("fedrep+dp-sgd", r"^dp-sgd cannot wrap fedrep: it privatises the standard local loop over every parameter, "
                      r"and this method trains in phases of its own$"),
])
def test_bad_method_names_are_one_line_errors(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        apply_overrides(Config(), {"method": spec})
    assert "\n" not in str(info.value)


# -- settings sections and the hash ------------------------------------------------------------------
def test_a_section_the_run_does_not_use_is_outside_its_hash_and_its_config_toml():
    base = Config()  # rvepfl
    assert config_hash(base) == config_hash(apply_overrides(base, {"nbafl.epsilon": 3.0, "dp_sgd.delta": 1e-3}))
    assert config_hash(base) != config_hash(apply_overrides(base, {"model.kl_weight": 0.5}))
    composed = apply_overrides(base, {"method": "rvepfl+nbafl"})
    assert config_hash(composed) != config_hash(apply_overrides(composed, {"nbafl.epsilon": 3.0}))
    text = dumps_config(composed)
    assert "[model]" in text and "[nbafl]" in text and "[dp_sgd]" not in text and "[personal]" not in text


def test_section_values_are_checked_by_their_own_dataclass():
    with pytest.raises(ConfigError, match=r"^Expected `nbafl.epsilon` > 0, got 0.0$"):
        apply_overrides(Config(), {"nbafl.epsilon": 0})
    with pytest.raises(ConfigError, match=r"^Expected `personal.head_epochs` >= 0, got -1$"):
        apply_overrides(Config(), {"personal.head_epochs": -1})


@pytest.mark.parametrize("overrides, legacy", [
    # The hashes rvepfl 0.1.0 (commit 0d63e5a, before methods owned their settings) gave these configs.
    ({}, "bba51d4e31cb"),
    ({"method": "nbafl", "nbafl.epsilon": 5.0, "seed": 3, "workers": 2}, "a78442c20b6e"),
    ({"method": "fedrep", "personal.head_epochs": 2, "data.subset": 300}, "2ef873ac66f6"),
])
def test_the_legacy_hash_is_what_the_earlier_scheme_gave(overrides, legacy):
    cfg = apply_overrides(Config(), overrides)
    assert legacy_config_hash(cfg) == legacy
    assert config_hash(cfg) != legacy


def test_a_run_made_before_methods_owned_their_settings_resumes(tmp_path, capsys):
    """Its progress marker holds the earlier hash and its config.toml every section: it continues,
    and ends as an uninterrupted run does. (scripts/same_numbers.py --legacy-resume does the same
    with a run the earlier commit itself made.)"""
    cfg = tiny_cfg("fedavg")
    ref = RunDir(tmp_path / "ref")
    fed = prepare(cfg)
    initialise(fed, ref)
    train(fed, ref)

    old = RunDir(tmp_path / "old")
    initialise(prepare(apply_overrides(cfg, {"train.rounds": 1})), old)
    train(prepare(apply_overrides(cfg, {"train.rounds": 1})), old)
    import tomli_w

    from rvepfl.config import config_to_dict

    old.config.write_text(tomli_w.dumps(config_to_dict(cfg)))  # every section, as the earlier scheme wrote
    state = json.loads(old.progress.read_text())
    old.progress.write_text(json.dumps({**state, "config_hash": legacy_config_hash(cfg)}))
    from rvepfl.cli import main

    capsys.readouterr()
    assert main(["train", "--resume", str(old.path), "--quiet"]) == 0
    # --quiet: no progress lines; the number format is named where it is not float32 (native bf16)
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("precision bf16-mixed: ")]
    assert len(err) == 1 and err[0].startswith("resuming "), err
    for name in PUBLISHED_CSVS:
        assert (old.metrics / name).read_bytes() == (ref.metrics / name).read_bytes(), name
    assert json.loads(old.progress.read_text())["config_hash"] == config_hash(cfg)


def test_a_mechanism_alone_and_on_fedavg_give_the_same_numbers(tmp_path):
    runs = {}
    for spec in ("nbafl", "fedavg+nbafl"):
        fed = prepare(tiny_cfg(spec, **{"nbafl.epsilon": 5.0}))
        runs[spec] = RunDir(tmp_path / spec)
        initialise(fed, runs[spec])
        train(fed, runs[spec])
    for name in PUBLISHED_CSVS:
        assert (runs["nbafl"].metrics / name).read_bytes() == (runs["fedavg+nbafl"].metrics / name).read_bytes()


# -- RVE-PFL with NbAFL's noise ----------------------------------------------------------------------
def test_rvepfl_nbafl_uploads_the_clipped_classifier_plus_nbafl_noise():
    cfg = apply_overrides(Config(), {"method": "rvepfl+nbafl", "data.num_clients": 4, "train.rounds": 10,
                                     "nbafl.clip_norm": 1.0, "nbafl.epsilon": 5.0})
    method = registry.method_class("rvepfl+nbafl")(cfg, DataSpec(1, 28, 10, (120, 100, 130, 110)))
    model = method.build_model()
    up = method.upload(model, RoundContext(round=3, client=2, seed=5), 110, {})
    assert set(up.state) == {k for k in model.state_dict() if k.startswith("classifier.")}
    clipped, norm = clip_by_l2(method.shared_state(model), 1.0)
    sigma_u = method.summary()["sigma_u"]
    expected = add_gaussian_noise(clipped, sigma_u, torch_generator(5, "noise", 3, 2))
    assert all(torch.equal(up.state[k], expected[k]) for k in expected)
    noise = torch.cat([(up.state[k].double() - clipped[k].double()).flatten() for k in clipped])
    assert noise.std().item() == pytest.approx(sigma_u, rel=0.02)
    assert up.info["norm_before_clip"] == pytest.approx(norm) and norm > 1.0


@pytest.fixture(scope="module")
def composed_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("composed") / "run"
    fed = prepare(tiny_cfg("rvepfl+nbafl", **{"nbafl.epsilon": 5.0}))
    initialise(fed, RunDir(path))
    summary = train(fed, RunDir(path))
    return path, summary


@pytest.mark.slow
def test_rvepfl_nbafl_trains_and_reports_its_noise(composed_run):
    path, summary = composed_run
    assert summary["status"] == "complete" and summary["method"] == "rvepfl+nbafl"
    details = summary["method_details"]
    assert details["sigma_u"] > 0 and details["N"] == 2 and details["T"] == 2
    assert summary["parameters"]["private_per_client"] > 0  # the encoder stayed private
    assert json.loads((path / "summary.json").read_text())["method_details"] == details


@pytest.mark.slow
def test_the_server_sees_rvepfl_nbafl_steps_through_nbafl_noise(composed_run):
    """The gradient threat model: the upload after one step on the classifier's input z, clipped
    and noised; theta - lr * observed - clip(theta - lr * g) is NbAFL's noise, of std sigma_u."""
    path, summary = composed_run
    target = Target(path)
    x, truth = target.client_batch(0, 1, draw=0, seed=0)
    obs = target.observe_gradient(target.default_round(), 0, x, truth.labels, seed=0, draw=0)
    path_ = target.gradient_surface(target.default_round(), 0)
    seed_torch(0, "attack", target.default_round(), 0, 0)
    with torch.no_grad():
        z = path_.to_input(x)
    assert obs.bounds is None  # the classifier reads z, not pixels
    lr = target.cfg.train.lr
    names = [k for k, _ in path_.module.named_parameters()]
    theta = {k: p.detach().double() for k, p in path_.module.named_parameters()}
    g = dict(zip(names, (t.double() for t in observed_gradient(path_.module, z, truth.labels))))
    clipped, _ = clip_by_l2({k: theta[k] - lr * g[k] for k in names}, summary["method_details"]["C"])
    noise = torch.cat([(theta[k] - lr * obs.gradients[i].double() - clipped[k]).flatten() for i, k in enumerate(names)])
    assert noise.std().item() == pytest.approx(summary["method_details"]["sigma_u"], rel=0.02)


@pytest.mark.slow
def test_rvepfl_nbafl_on_flower_writes_the_in_process_run(tmp_path, composed_run):
    """The ServerApp and ClientApps (over an in-process Grid) give the in-process run's bytes, and
    the server received the noised classifier only."""
    from tests.helpers.flower import InProcessGrid, need_flwr

    need_flwr()
    from rvepfl.flower.appconfig import run_config
    from rvepfl.flower.server import FlowerServer

    ref, _ = composed_run
    cfg = tiny_cfg("rvepfl+nbafl", **{"nbafl.epsilon": 5.0})
    nodes = {100 + i: {"partition-id": i, "num-partitions": 2, "state-dir": str(tmp_path / f"node{i}")}
             for i in range(2)}
    grid = InProcessGrid(nodes)
    grid.run_config = run_config(cfg, out=str(tmp_path / "run"))
    summary = FlowerServer(grid, cfg, RunDir(tmp_path / "run"), wait_nodes=5, log=lambda line: None,
                           poll=0).run_federation()
    for name in PUBLISHED_CSVS:
        assert (tmp_path / "run" / "metrics" / name).read_bytes() == (ref / "metrics" / name).read_bytes(), name
    ref_summary = json.loads((ref / "summary.json").read_text())
    assert summary["method_details"]["sigma_u"] == ref_summary["method_details"]["sigma_u"]
    received = json.loads((tmp_path / "run" / "flower" / "received.json").read_text())
    for entry in (e for e in received if e["type"] == "train"):
        assert all(k.startswith("classifier.") for k in entry["records"]["upload"]["arrays"])
