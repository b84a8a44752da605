"""The pure privacy functions: clipping, Gaussian noise, NbAFL's noise levels, RDP accounting."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rvepfl.maths import (
    add_gaussian_noise,
    clip_by_l2,
    downlink_sigma,
    gaussian_constant,
    l2_norm,
    nbafl_noise,
    rdp_epsilon,
    uplink_sensitivity,
    uplink_sigma,
)

# -- NbAFL golden values ---------------------------------------------------------------------------
# c = sqrt(2 ln(1.25 / 0.01)) = sqrt(2 * 4.8283137) = sqrt(9.6566275) = 3.1075115
C_001 = 3.1075115


def test_gaussian_constant_and_sensitivity():
    assert gaussian_constant(0.01) == pytest.approx(C_001, rel=1e-7)
    assert uplink_sensitivity(20.0, 900) == pytest.approx(40 / 900)


def test_all_clients_downlink_zero_when_l_equals_t():
    # eps = 60, delta = 0.01, C = 20, m = 900, N = 10, T = L = 10 (exposures = rounds):
    # dS_u = 2 * 20 / 900 = 0.0444444
    # sigma_u = c * L * dS_u / eps = 3.1075115 * 10 * 0.0444444 / 60 = 0.0230186
    # T = 10 <= L * sqrt(N) = 31.62 -> sigma_d = 0
    noise = nbafl_noise(epsilon=60.0, delta=0.01, clip_norm=20.0, min_samples=900, num_clients=10,
                        rounds=10, exposures=10)
    assert noise.sigma_u == pytest.approx(0.0230186, rel=1e-5)
    assert noise.sigma_d == 0.0
    assert "L*sqrt(N)" in noise.downlink.reason
    assert noise.as_dict()["scheduling"] == "all clients every round"


def test_all_clients_downlink_positive():
    # eps = 10, delta = 0.01, C = 1, m = 100, N = 4, T = 10, L = 1: T > L sqrt(N) = 2, so
    # sigma_d = 2 c C sqrt(T^2 - L^2 N) / (m N eps) = 2 * 3.1075115 * sqrt(96) / 4000
    #         = 6.2150229 * 9.7979590 / 4000 = 60.894546 / 4000 = 0.0152236
    # sigma_u = c * 1 * (2 / 100) / 10 = 0.0062150
    down = downlink_sigma(epsilon=10.0, delta=0.01, clip_norm=1.0, min_samples=100, num_clients=4,
                          rounds=10, exposures=1)
    assert down.sigma == pytest.approx(0.0152236, rel=1e-5)
    assert uplink_sigma(epsilon=10.0, delta=0.01, clip_norm=1.0, min_samples=100, exposures=1) == pytest.approx(
        0.0062150, rel=1e-4)
    # At the boundary T = L sqrt(N) = 2 the uplink noise suffices.
    assert downlink_sigma(epsilon=10.0, delta=0.01, clip_norm=1.0, min_samples=100, num_clients=4,
                          rounds=2, exposures=1).sigma == 0.0


def test_k_random_scheduling_downlink_positive():
    # N = 10, K = 5, eps = 1, T = 10, L = 1, delta = 0.01, C = 1, m = 100:
    # gamma = -ln(1 - 0.5 + 0.5 e^(-1 / sqrt 5)) = -ln(0.5 + 0.5 * 0.6394073) = -ln(0.8197037) = 0.1988124
    # eps / gamma = 5.0299 < T = 10, so the server adds noise;
    # b = -(T / eps) ln(1 - 2 + 2 e^(-0.1)) = -10 ln(0.8096748) = 2.1112255
    # T^2 / b^2 - L^2 K = 100 / 4.4572733 - 5 = 17.435236; sqrt = 4.1755522
    # sigma_d = 2 c C * 4.1755522 / (m K eps) = 6.2150229 * 4.1755522 / 500 = 0.0519023
    down = downlink_sigma(epsilon=1.0, delta=0.01, clip_norm=1.0, min_samples=100, num_clients=10,
                          rounds=10, exposures=1, clients_per_round=5)
    assert down.gamma == pytest.approx(0.1988124, rel=1e-5)
    assert down.b == pytest.approx(2.1112255, rel=1e-6)
    assert down.sigma == pytest.approx(0.0519023, rel=1e-5)


def test_k_random_scheduling_zero_and_b_undefined():
    # N = 10, K = 5, eps = 60, T = L = 10: 1 - 2 + 2 e^(-6) = -0.995 <= 0, so b is undefined;
    # gamma = -ln(0.5 + 0.5 e^(-60 / (10 sqrt 5))) = -ln(0.5341) = 0.6270, eps / gamma = 95.7 >= T: no noise.
    down = downlink_sigma(epsilon=60.0, delta=0.01, clip_norm=20.0, min_samples=900, num_clients=10,
                          rounds=10, exposures=10, clients_per_round=5)
    assert down.sigma == 0.0 and down.b is None
    assert down.gamma == pytest.approx(0.6270425, rel=1e-6)
    assert "b is undefined" in down.reason


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 200), k_frac=st.floats(0.01, 0.99), eps=st.floats(0.05, 100.0),
    rounds=st.integers(1, 500), exposures=st.integers(1, 50),
)
def test_k_random_condition_matches_the_square_root(n, k_frac, eps, rounds, exposures):
    """T > eps/gamma holds exactly when b is defined and T^2/b^2 > L^2 K: sigma_d is never NaN."""
    k = min(n - 1, max(1, round(k_frac * n)))
    down = downlink_sigma(epsilon=eps, delta=0.01, clip_norm=1.0, min_samples=10, num_clients=n,
                          rounds=rounds, exposures=exposures, clients_per_round=k)
    assert math.isfinite(down.sigma) and down.sigma >= 0
    if down.sigma > 0:
        assert down.b is not None and rounds**2 / down.b**2 > exposures**2 * k


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilon": -1.0}, r"Expected `epsilon` > 0, got -1.0"),
        ({"delta": 1.5}, r"Expected `delta` in \(0, 1\), got 1.5"),
        ({"clip_norm": 0.0}, r"Expected `clip_norm` > 0, got 0.0"),
        ({"min_samples": 0}, r"Expected `min_samples` to be an integer >= 1, got 0"),
        ({"exposures": 0}, r"Expected `exposures` to be an integer >= 1, got 0"),
        ({"clients_per_round": 11}, r"Expected `clients_per_round` <= num_clients \(10\), got 11"),
    ],
)
def test_nbafl_arguments_are_validated(kwargs, match):
    args = {"epsilon": 1.0, "delta": 0.01, "clip_norm": 1.0, "min_samples": 10, "num_clients": 10,
            "rounds": 5, "exposures": 1, "clients_per_round": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        nbafl_noise(**args)


# -- clipping --------------------------------------------------------------------------------------
def test_clip_golden_and_unchanged_below_the_bound():
    state = {"w": torch.tensor([[3.0, 0.0]]), "b": torch.tensor([4.0])}
    clipped, norm = clip_by_l2(state, 2.5)
    assert norm == 5.0
    assert torch.allclose(clipped["w"], torch.tensor([[1.5, 0.0]]))
    assert torch.allclose(clipped["b"], torch.tensor([2.0]))
    same, norm = clip_by_l2(state, 5.0)
    assert norm == 5.0 and all(torch.equal(same[k], state[k]) for k in state)
    assert same["w"] is not state["w"]  # a copy


@settings(max_examples=100, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=4),
    scale=st.floats(1e-3, 1e3),
    bound=st.floats(1e-2, 1e2),
    seed=st.integers(0, 2**31),
)
def test_clip_property(shapes, scale, bound, seed):
    g = torch.Generator().manual_seed(seed)
    state = {f"t{i}": torch.randn(tuple(s), generator=g) * scale for i, s in enumerate(shapes)}
    clipped, norm = clip_by_l2(state, bound)
    assert norm == pytest.approx(l2_norm(state))
    assert l2_norm(clipped) <= bound * (1 + 1e-5)
    if norm <= bound:
        assert all(torch.equal(clipped[k], state[k]) for k in state)
    else:  # same direction, scaled by bound / norm
        for k in state:
            assert torch.allclose(clipped[k], state[k] * (bound / norm), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf")])
def test_clip_rejects_bad_bounds(bad):
    with pytest.raises(ValueError, match=r"Expected `clip_norm` > 0"):
        clip_by_l2({"w": torch.ones(2)}, bad)
    with pytest.raises(ValueError, match=r"Expected `clip_norm` > 0, got -1.0"):
        clip_by_l2({"w": torch.ones(2)}, -1.0)


def test_clip_rejects_integer_tensors_and_empty_states():
    with pytest.raises(ValueError, match="floating-point tensors, got `n` of dtype torch.int64"):
        clip_by_l2({"w": torch.ones(2), "n": torch.tensor(3)}, 1.0)
    with pytest.raises(ValueError, match="at least one tensor"):
        clip_by_l2({}, 1.0)


# -- noise -----------------------------------------------------------------------------------------
def test_noise_has_the_requested_std():
    state = {"a": torch.zeros(100_000), "b": torch.full((300, 200), 5.0)}
    noisy = add_gaussian_noise(state, 0.3, torch.Generator().manual_seed(1))
    noise = torch.cat([noisy["a"], (noisy["b"] - 5.0).flatten()])
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(noise.mean().item()) < 0.005
    assert torch.equal(state["a"], torch.zeros(100_000))  # the input is not modified


def test_noise_is_determined_by_the_generator_seed():
    state = {"w": torch.zeros(50), "b": torch.zeros(3, dtype=torch.float64)}
    a = add_gaussian_noise(state, 1.0, torch.Generator().manual_seed(7))
    b = add_gaussian_noise(state, 1.0, torch.Generator().manual_seed(7))
    c = add_gaussian_noise(state, 1.0, torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in state)
    assert not torch.equal(a["w"], c["w"])
    assert a["b"].dtype == torch.float64


def test_zero_noise_and_bad_noise_arguments():
    state = {"w": torch.arange(3.0)}
    assert torch.equal(add_gaussian_noise(state, 0.0, torch.Generator())["w"], state["w"])
    with pytest.raises(ValueError, match=r"Expected `std` >= 0, got -0.5"):
        add_gaussian_noise(state, -0.5, torch.Generator())
    with pytest.raises(TypeError, match="torch.Generator"):
        add_gaussian_noise(state, 1.0, 0)  # type: ignore[arg-type]


# -- accounting ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma, q, steps", [(1.1, 0.3, 7), (1.0, 1.0, 10), (0.8, 0.01, 1000)])
def test_rdp_epsilon_equals_opacus_rdp_accountant(sigma, q, steps):
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    expected = accountant.get_epsilon(delta=1e-5)
    got = rdp_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5)
    assert got == pytest.approx(expected, rel=1e-12)


def test_rdp_epsilon_grows_with_steps_and_edge_cases():
    eps = [rdp_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=s, delta=1e-5) for s in (1, 10, 100)]
    assert eps == sorted(eps) and eps[0] > 0
    assert rdp_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5) == 0.0
    assert rdp_epsilon(noise_multiplier=0.0, sample_rate=0.1, steps=1, delta=1e-5) == math.inf


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise_multiplier": -1.0}, r"Expected `noise_multiplier` >= 0, got -1.0"),
        ({"sample_rate": 0.0}, r"Expected `sample_rate` in \(0, 1\], got 0.0"),
        ({"steps": -1}, r"Expected `steps` to be an integer >= 0, got -1"),
        ({"delta": 0.0}, r"Expected `delta` in \(0, 1\), got 0.0"),
    ],
)
def test_rdp_epsilon_validates(kwargs, match):
    args = {"noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 3, "delta": 1e-5, **kwargs}
    with pytest.raises(ValueError, match=match):
        rdp_epsilon(**args)
