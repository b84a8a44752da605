"""The published protocol, opt-in: the leaky re-drawn test split and the one Adam shared by all
clients (``data.test_split = "published-leaky"``, ``train.optimiser = "published-shared"``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from rvepfl.config import Config, apply_overrides, config_hash, published_warnings
from rvepfl.errors import ConfigError
from rvepfl.fl.client import prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.flower.appconfig import check_flower_config
from rvepfl.rundir import PUBLISHED_CSVS, RunDir
from rvepfl.shared_adam import initial_carrier, load_carrier, store_carrier
from tests.helpers.methods import tiny_cfg


def _run(tmp_path, name: str, cfg: Config) -> RunDir:
    fed = prepare(cfg)
    run = RunDir(tmp_path / name)
    initialise(fed, run)
    train(fed, run)
    return run


# -- the leaky split -------------------------------------------------------------------------------
def test_the_leaky_split_is_redrawn_each_round_from_the_clients_own_images():
    fed = prepare(tiny_cfg("fedavg", **{"data.test_split": "published-leaky"}))
    split = fed.partition.clients[0]
    own = set(split.train) | set(split.test)
    tests = []
    for round_ in (1, 2, 3):
        data = fed.client_data(0, round_)
        assert (len(data.train_y), len(data.test_y)) == (len(split.train), len(split.test))
        tests.append(data.test_y.clone())
        # the same round gives the same draw (seeded), and the images stay the client's own
        assert torch.equal(fed.client_data(0, round_).test_x, data.test_x)
    assert not torch.equal(tests[0], tests[1]) or not torch.equal(tests[1], tests[2])
    pool = {tuple(x.flatten().tolist()) for x in fed.pool_x[torch.from_numpy(np.array(sorted(own)))]}
    assert all(tuple(x.flatten().tolist()) in pool for x in fed.client_data(0, 2).test_x)
    # without a round (the attacks) and with the fixed split, the partition's split
    fixed = prepare(tiny_cfg("fedavg"))
    assert torch.equal(fed.client_data(0).test_y, fixed.client_data(0, 2).test_y)


def test_the_leaky_split_needs_the_combined_split():
    with pytest.raises(ConfigError,
                       match='Expected `data.split` to be "combined" with `data.test_split = "published-leaky"`'):
        tiny_cfg("fedavg", **{"data.test_split": "published-leaky", "data.split": "standard"})


# -- the shared optimiser --------------------------------------------------------------------------
def test_a_carried_adam_continues_as_one_adam_would():
    """Two Adams that pass the carrier between them step exactly as one Adam that never stops."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    twin = nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    one = torch.optim.Adam(twin.parameters(), lr=0.01)
    carrier = initial_carrier(model)
    for _ in range(2):  # two "clients", three steps each
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        load_carrier(opt, model, list(model.parameters()), carrier)
        for _ in range(3):
            for m, o in ((model, opt), (twin, one)):
                o.zero_grad()
                nn.functional.cross_entropy(m(x), y).backward()
                o.step()
        store_carrier(opt, model, list(model.parameters()), carrier)
    assert float(carrier["weight/step"]) == 6.0
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


@pytest.mark.slow  # several whole runs, one stopped and resumed
def test_the_published_settings_change_the_numbers_and_the_shared_optimiser_resumes(tmp_path, monkeypatch):
    """A run stopped in round 2 (after its first client had moved the carried optimiser on) and
    resumed gives the bytes of one that ran straight through; the carried optimiser is what
    makes it differ from the honest run."""
    from rvepfl.fl import client as client_side

    shared = tiny_cfg("fedavg", **{"train.optimiser": "published-shared"})
    straight = _run(tmp_path, "straight", shared)
    real = client_side.train_client

    def stop_in_round_2(fed, model, store, initial, state, round_, client, *rest):
        if (round_, client) == (2, 1):
            raise KeyboardInterrupt
        return real(fed, model, store, initial, state, round_, client, *rest)

    monkeypatch.setattr(client_side, "train_client", stop_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", shared)
    monkeypatch.setattr(client_side, "train_client", real)
    resumed = RunDir(tmp_path / "resumed")
    assert resumed.read_progress()["completed_round"] == 1
    train(prepare(shared), resumed)
    for name in PUBLISHED_CSVS:
        assert (resumed.metrics / name).read_bytes() == (straight.metrics / name).read_bytes(), name
    honest = _run(tmp_path, "honest", tiny_cfg("fedavg"))
    leaky = _run(tmp_path, "leaky", tiny_cfg("fedavg", **{"data.test_split": "published-leaky"}))
    for other in (straight, leaky):
        assert (honest.metrics / "epoch_testing.csv").read_bytes() != (other.metrics / "epoch_testing.csv").read_bytes()
    assert json.loads((leaky.path / "summary.json").read_text())["published_defects"][0].startswith("data.test_split")
    summary = json.loads((straight.path / "summary.json").read_text())
    assert summary["workers"] == 1 and len(summary["published_defects"]) == 1
    assert sorted(p.name for p in (straight.state / "optimiser").iterdir()) == ["r0002.safetensors"]


@pytest.mark.parametrize("overrides, match", [
    ({"workers": 2}, "Expected `workers` to be 0 or 1"),
    ({"faults.client_timeout": 5.0}, "Expected `faults.client_timeout` to be 0"),
])
def test_the_shared_optimiser_refuses_clients_side_by_side(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_cfg("fedavg", **{"train.optimiser": "published-shared", **overrides})


def test_flower_refuses_the_shared_optimiser():
    with pytest.raises(ConfigError, match="use `rvepfl train` for it"):
        check_flower_config(tiny_cfg("fedavg", **{"train.optimiser": "published-shared"}))


# -- labels ----------------------------------------------------------------------------------------
def test_an_honest_run_keeps_its_hash_and_has_no_warning():
    cfg = Config()
    assert published_warnings(cfg) == []
    assert config_hash(cfg) == "ed1663c3ecf2"
    leaky = apply_overrides(cfg, {"data.test_split": "published-leaky", "train.optimiser": "published-shared"})
    assert config_hash(leaky) != config_hash(cfg)
    assert [w.split(" =")[0] for w in published_warnings(leaky)] == ["data.test_split", "train.optimiser"]
    assert "NOT a test accuracy" in published_warnings(leaky)[0]
