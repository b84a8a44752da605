"""The DP baselines: NbAFL, DP-FedAvg and local DP-SGD, alone and through the engine."""

from __future__ import annotations

import json

import pytest
import torch

from rvepfl.config import Config, apply_overrides
from rvepfl.errors import ConfigError
from rvepfl.fl.client import prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.maths import add_gaussian_noise, clip_by_l2, l2_norm
from rvepfl.methods import ClientData, DataSpec, RoundContext, Upload
from rvepfl.models import Classifier
from rvepfl.registry import available_methods, method_class
from rvepfl.rundir import RunDir
from rvepfl.seeding import torch_generator
from tests.helpers.methods import random_data as make_random_data
from tests.helpers.methods import tiny_cfg


def random_data(n: int = 64) -> ClientData:
    return make_random_data(n, 8)


def test_dp_methods_are_registered():
    assert {"nbafl", "dp-fedavg", "dp-sgd"} <= set(available_methods())


# -- NbAFL -----------------------------------------------------------------------------------------
def nbafl(**overrides):
    cfg = apply_overrides(Config(), {"method": "nbafl", "data.num_clients": 4, "train.rounds": 10, **overrides})
    return method_class("nbafl")(cfg, DataSpec(1, 8, 10, (120, 100, 130, 110)))


def test_nbafl_uploads_clipped_parameters_plus_seeded_noise():
    method = nbafl(**{"nbafl.clip_norm": 1.0})
    model = method.build_model()
    ctx = RoundContext(round=3, client=2, seed=5)
    up = method.upload(model, ctx, 110, {})
    clipped, norm = clip_by_l2(method.shared_state(model), 1.0)
    expected = add_gaussian_noise(clipped, method.nbafl_noise.sigma_u, torch_generator(5, "noise", 3, 2))
    assert set(up.state) == set(model.state_dict())
    assert all(torch.allclose(up.state[k], expected[k]) for k in expected)
    assert up.info["norm_before_clip"] == pytest.approx(norm) and norm > 1.0
    assert method.nbafl_noise.m == 100 and method.nbafl_noise.L == 10  # L = T when exposures = 0


def test_nbafl_server_adds_downlink_noise_only_when_needed():
    quiet = nbafl()  # L = T: sigma_d = 0, the aggregate is the plain mean
    model = quiet.build_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ups = [Upload(c, 100, state) for c in range(4)]
    server = RoundContext(round=1, client=None, seed=0)
    assert quiet.nbafl_noise.sigma_d == 0
    assert all(torch.equal(v, state[k]) for k, v in quiet.aggregate(ups, state, server).items())
    loud = nbafl(**{"nbafl.exposures": 1, "nbafl.epsilon": 1.0})  # T = 10 > L sqrt(N) = 2
    sigma_d = loud.nbafl_noise.sigma_d
    assert sigma_d > 0
    noise = torch.cat([(v - state[k]).flatten() for k, v in loud.aggregate(ups, state, server).items()])
    assert noise.std().item() == pytest.approx(sigma_d, rel=0.05)
    details = loud.summary()
    for key in ("sigma_u", "sigma_d", "c", "m", "C", "epsilon", "delta", "K", "N", "T", "L"):
        assert key in details, key
    assert details["L"] == 1 and details["L_source"] == "nbafl.exposures"


def test_nbafl_k_random_scheduling_in_summary():
    details = nbafl(**{"train.client_fraction": 0.5}).summary()
    assert details["K"] == 2 and details["N"] == 4 and details["scheduling"] == "K-random"
    assert details["gamma"] > 0


def test_nbafl_needs_client_sizes():
    cfg = apply_overrides(Config(), {"method": "nbafl", "data.num_clients": 2})
    with pytest.raises(ConfigError, match="training-set size"):
        method_class("nbafl")(cfg, DataSpec(1, 8, 10))
    with pytest.raises(ConfigError, match="at least one training sample"):
        method_class("nbafl")(cfg, DataSpec(1, 8, 10, (0, 5)))


# -- DP-FedAvg -------------------------------------------------------------------------------------
def test_dp_fedavg_uploads_clipped_updates_and_noises_their_mean():
    cfg = apply_overrides(Config(), {"method": "dp-fedavg", "data.num_clients": 4, "dp_fedavg.clip_norm": 0.5,
                                     "dp_fedavg.noise_multiplier": 2.0})
    method = method_class("dp-fedavg")(cfg, DataSpec(1, 8, 10, (50,) * 4))
    model = method.build_model()
    received = {k: v.clone() + 1.0 for k, v in model.state_dict().items()}
    up = method.upload(model, RoundContext(1, 0, 0), 50, received)
    assert l2_norm(up.state) == pytest.approx(0.5, rel=1e-5) and up.info["update_norm"] > 0.5
    zeros = {k: torch.zeros_like(v) for k, v in up.state.items()}
    new = method.aggregate([Upload(c, 50, zeros) for c in range(4)], received, RoundContext(1, None, 0))
    noise = torch.cat([(new[k] - received[k]).flatten() for k in received])
    assert noise.std().item() == pytest.approx(2.0 * 0.5 / 4, rel=0.05)


@pytest.mark.parametrize("fraction, rounds", [(1.0, 3), (0.5, 5)])
def test_dp_fedavg_epsilon_equals_opacus_accountant(fraction, rounds):
    from opacus.accountants import RDPAccountant

    cfg = apply_overrides(Config(), {"method": "dp-fedavg", "data.num_clients": 4, "train.rounds": rounds,
                                     "train.client_fraction": fraction, "dp_fedavg.noise_multiplier": 1.3})
    method = method_class("dp-fedavg")(cfg, DataSpec(1, 8, 10, (50,) * 4))
    state = {k: v.clone() for k, v in method.build_model().state_dict().items()}
    accountant = RDPAccountant()
    for r in range(1, rounds + 1):
        method.aggregate([Upload(0, 50, {k: torch.zeros_like(v) for k, v in state.items()})], state,
                         RoundContext(r, None, 0))
        accountant.step(noise_multiplier=1.3, sample_rate=fraction)
        assert method.summary()["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-12)
    assert method.summary()["epsilon_after_all_rounds"] == method.summary()["epsilon"]


# -- DP-SGD ----------------------------------------------------------------------------------------
def dp_sgd(**overrides):
    cfg = apply_overrides(Config(), {"method": "dp-sgd", "train.batch_size": 16, "train.local_epochs": 2,
                                     "dp_sgd.noise_multiplier": 1.1, **overrides})
    return method_class("dp-sgd")(cfg, DataSpec(1, 8, 10, (64, 64)))


def _train_once(method, round_: int, client: int = 0):
    torch.manual_seed(0)  # dropout, as the engine seeds it
    model = method.build_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    steps = method.local_train(model, random_data(), RoundContext(round_, client, 0), 0)
    return model, initial, steps


def test_dp_sgd_local_train_keeps_the_model_and_reports_epsilon():
    from opacus.accountants import RDPAccountant

    method = dp_sgd()
    model, initial, steps = _train_once(method, 1)
    assert isinstance(model, Classifier)
    assert list(model.state_dict()) == list(initial)  # Opacus's wrapper is gone
    assert not any(torch.equal(model.state_dict()[k], initial[k]) for k in initial)
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks
    for p in model.parameters():
        assert not hasattr(p, "grad_sample") and p.grad is None
    assert steps == 2 * 4 == method.planned_steps(64)  # q = 16/64, int(1/q) = 4 Poisson batches per epoch, 2 epochs
    assert method.summary()["clients_accounted"] == 0  # the server learns epsilon from the upload
    received = {k: v.clone() for k, v in initial.items()}
    sent = method.upload(model, RoundContext(1, 0, 0), 64, received)
    assert sent.info["dp_sgd"]["steps"] == steps
    method.aggregate([sent], received, RoundContext(1, None, 0))
    details = method.summary()
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=1.1, sample_rate=0.25)
    assert details["clients_accounted"] == 1
    assert details["epsilon_max"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-12)
    assert 0 < details["epsilon_mean"] < float("inf")


def test_dp_sgd_is_seeded_by_round_and_client():
    a, _, _ = _train_once(dp_sgd(), 1)
    b, _, _ = _train_once(dp_sgd(), 1)
    c, _, _ = _train_once(dp_sgd(), 2)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.state_dict()["out.weight"], c.state_dict()["out.weight"])


def test_dp_sgd_epsilon_accumulates_over_a_clients_rounds():
    method = dp_sgd(**{"train.local_epochs": 1})
    model = method.build_model()

    def report(ctx: RoundContext) -> None:  # upload, and the server's aggregation of it
        received = {k: v.clone() for k, v in model.state_dict().items()}
        method.aggregate([method.upload(model, ctx, 64, received)], received, RoundContext(ctx.round, None, 0))

    steps = method.local_train(model, random_data(), RoundContext(1, 1, 0), 0)
    report(RoundContext(1, 1, 0))
    first = method.summary()["epsilon_max"]
    # The decay clock passed as `step` may count other clients' steps (lr_decay_clock =
    # "federation"); the accountant counts only this client's own steps.
    clock = 1000
    assert method.local_train(model, random_data(), RoundContext(2, 1, 0, client_steps=steps), clock) == clock + steps
    report(RoundContext(2, 1, 0))
    assert method.summary()["clients"][0]["steps"] == 2 * steps
    assert method.summary()["epsilon_max"] > first


# -- through the engine ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, keys",
    [
        ("nbafl", ("sigma_u", "sigma_d", "c", "m", "C", "epsilon", "delta", "K", "N", "T", "L")),
        ("dp-fedavg", ("epsilon", "noise_multiplier", "clip_norm", "sample_rate")),
        ("dp-sgd", ("epsilon_max", "epsilon_mean", "noise_multiplier", "max_grad_norm")),
    ],
)
def test_engine_smoke_run_reports_privacy(tmp_path, method, keys):
    cfg = tiny_cfg(method)
    fed = prepare(cfg)
    run = RunDir(tmp_path / method)
    initialise(fed, run)
    summary = train(fed, run)
    written = json.loads(run.summary.read_text())
    assert written["status"] == "complete" and written["method"] == method
    details = written["method_details"]
    for key in keys:
        assert details[key] is not None, key
    assert summary["method_details"] == details
    if method == "nbafl":
        assert details["N"] == 2 and details["T"] == 2 and details["sigma_u"] > 0
    if method == "dp-fedavg":
        assert details["rounds_accounted"] == 2 and details["epsilon"] > 0
    if method == "dp-sgd":
        assert details["clients_accounted"] == 2 and details["epsilon_max"] > 0
