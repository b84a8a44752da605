"""Secure aggregation: the arithmetic (against Flower's own functions), the in-process engine's
quantised mean, and Flower's SecAgg+ protocol inside the ServerApp over an in-process Grid (the
real loopback deployment is in tests/e2e/test_flower.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.flower import need_flwr

need_flwr()

from flwr.common.secure_aggregation.ndarrays_arithmetic import (  # noqa: E402
    factor_combine,
    factor_extract,
    parameters_multiply,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize  # noqa: E402

from rvepfl.config import Config, apply_overrides  # noqa: E402
from rvepfl.errors import ConfigError, RoundFailedError  # noqa: E402
from rvepfl.fl.client import ClientOutcome, prepare  # noqa: E402
from rvepfl.fl.secure_aggregation import rounding_seed  # noqa: E402
from rvepfl.fl.simulation import initialise, train  # noqa: E402
from rvepfl.fl.validation import check_outcome  # noqa: E402
from rvepfl.maths.secure_sum import Quantisation, QuantisedMean, decode, encode, sum_encoded  # noqa: E402
from rvepfl.methods import Upload  # noqa: E402
from rvepfl.rundir import RunDir  # noqa: E402
from tests.helpers.methods import tiny_cfg  # noqa: E402
from tests.unit.test_flower_server import _csvs, _flower  # noqa: E402

Q = Quantisation()


def _arrays(seed: int) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [g.normal(0, 0.3, (4, 3)).astype(np.float32), g.normal(0, 2, (5,)).astype(np.float32)]


# -- the arithmetic ------------------------------------------------------------------------------
def test_encode_is_flowers_client_quantisation_bit_for_bit():
    for weight, max_weight in ((1, 1.0), (37, 90.0)):
        ours = encode(_arrays(0), weight, max_weight, Q, np.random.RandomState(123))
        np.random.seed(123)  # the generator Flower's stochastic rounding draws from
        q_ratio = round(weight / max_weight * Q.quantization_range)
        scaled = parameters_multiply(_arrays(0), q_ratio / Q.quantization_range)
        theirs = factor_combine(q_ratio, quantize(scaled, Q.clipping_range, Q.quantization_range))
        assert len(ours) == len(theirs)
        assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_decode_is_flowers_server_dequantisation_bit_for_bit():
    clients = [encode(_arrays(s), w, 90.0, Q, np.random.RandomState(s)) for s, w in ((0, 90), (1, 45), (2, 60))]
    summed = sum_encoded(clients, Q)
    ours = decode(summed, 3, Q)
    q_total, arrays = factor_extract(summed)  # the workflow's unmask stage, step by step
    theirs = dequantize(arrays, Q.clipping_range, Q.quantization_range)
    for vec in theirs:
        vec += -(3 - 1) * Q.clipping_range
        vec *= Q.quantization_range / q_total
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_the_decoded_mean_is_the_weighted_mean_within_one_quantisation_step():
    weights = (90, 45, 60)
    states = [_arrays(s) for s in range(3)]
    clients = [encode(a, w, 90.0, Q, np.random.RandomState(s)) for s, (a, w) in enumerate(zip(states, weights))]
    mean = decode(sum_encoded(clients, Q), 3, Q)
    step = 2 * Q.clipping_range / Q.quantization_range
    for i in range(2):
        exact = sum(w * s[i].astype(np.float64) for w, s in zip(weights, states)) / sum(weights)
        # each client's value is scaled by w / 90 >= 1/2 before its rounding: an error of at most 2 steps
        assert np.abs(mean[i] - exact).max() < 2 * step + 1e-9


def test_values_outside_the_clipping_range_are_clipped():
    big = [np.array([20.0, -20.0, 1.0], dtype=np.float32)]
    mean = decode(sum_encoded([encode(big, 1, 1.0, Q, np.random.RandomState(0))] * 2, Q), 2, Q)
    assert np.allclose(mean[0], [8.0, -8.0, 1.0], atol=1e-5)


def test_quantised_mean_keeps_the_first_states_order_and_dtypes_whatever_the_others_order():
    mean = QuantisedMean(Q, max_weight=1.0)
    mean.add({"b": torch.tensor([1.0]), "a": torch.tensor([0.5], dtype=torch.float64)}, 1, seed=0)
    mean.add({"a": torch.tensor([0.0], dtype=torch.float64), "b": torch.tensor([0.0])}, 1, seed=1)
    out = mean.result()
    assert list(out) == ["b", "a"] and out["a"].dtype == torch.float64 and out["b"].dtype == torch.float32
    assert out["a"].item() == pytest.approx(0.25, abs=1e-5) and out["b"].item() == pytest.approx(0.5, abs=1e-5)


# -- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "message"), [
    ({"secure_aggregation.reconstruction_threshold": 4}, "a round has only 3 clients, fewer than the threshold"),
    ({"secure_aggregation.reconstruction_threshold": 1}, "reconstruction_threshold"),
    ({"secure_aggregation.num_shares": 2}, "between 3 and the 3 clients"),
    ({"secure_aggregation.num_shares": 4}, "between 3 and the 3 clients"),
    ({"data.num_clients": 6, "secure_aggregation.num_shares": 4}, "to be odd below the 6 clients"),
    ({"secure_aggregation.modulus_range": 3 * 2**22}, "power of 2"),
    ({"secure_aggregation.quantization_range": 2**31}, "the masked sum wraps"),
    ({"train.aggregation": "median"}, "sees only the sum"),
    ({"train.max_update_norm": 1.0}, "cannot bound an update it does not see"),
    ({"data.num_clients": 1}, "the sum of one upload is that upload"),
])
def test_bad_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        apply_overrides(Config(), {"data.num_clients": 3, "secure_aggregation.enabled": True, **overrides})
    assert "\n" not in str(info.value)


def test_secure_aggregation_off_leaves_the_config_hash_and_config_toml_as_before():
    from rvepfl.config import config_hash, dumps_config

    cfg = Config()
    assert "secure_aggregation" not in dumps_config(cfg)
    assert config_hash(cfg) != config_hash(apply_overrides(cfg, {"secure_aggregation.enabled": True}))


def test_a_masked_upload_must_carry_no_state():
    metrics = {k: {m: 0.5 for m in ("loss", "acc", "precision", "recall", "f1")} for k in ("general", "train", "test")}
    masked = ClientOutcome(Upload(0, 10, {}), metrics, 4, 1.0, 1.0)
    assert check_outcome(masked, client=0, expected=None, max_samples=10, planned_steps=4) is None
    clear = ClientOutcome(Upload(0, 10, {"w": torch.zeros(2)}), metrics, 4, 1.0, 1.0)
    assert "in the clear" in check_outcome(clear, client=0, expected=None, max_samples=10, planned_steps=4)


# -- the in-process engine ----------------------------------------------------------------------
def _train(cfg: Config, run: Path) -> dict:
    fed = prepare(cfg)
    initialise(fed, RunDir(run))
    return train(fed, RunDir(run))


@pytest.mark.parametrize("method", ["fedavg", "dp-fedavg", pytest.param("rvepfl+nbafl", marks=pytest.mark.slow)])
def test_in_process_secure_aggregation_moves_round_1_by_at_most_a_quantisation_step(tmp_path, method):
    """Round 1's uploads are the same with and without secure aggregation, so the two global
    states differ only by the quantisation (and keep DP-FedAvg's and NbAFL's server noise)."""
    base = {"data.num_clients": 3, "train.rounds": 1, "data.subset": 150}
    _train(tiny_cfg(method, **base), tmp_path / "plain")
    _train(tiny_cfg(method, **base, **{"secure_aggregation.enabled": True}), tmp_path / "secure")
    plain, secure = (load_file(str(tmp_path / d / "checkpoints/round_0001/global.safetensors"))
                     for d in ("plain", "secure"))
    initial = load_file(str(tmp_path / "plain/checkpoints/round_0000/global.safetensors"))
    step = 2 * Q.clipping_range / Q.quantization_range
    assert max(float((plain[k] - secure[k]).abs().max()) for k in plain) <= step + 1e-6
    assert any(not torch.equal(plain[k], secure[k]) for k in plain)  # it was quantised
    assert any(not torch.equal(plain[k], initial[k]) for k in plain)


def test_weighted_aggregation_sends_each_clients_sample_count_as_its_weight(tmp_path):
    cfg = tiny_cfg("fedavg", **{"data.num_clients": 3, "train.rounds": 1, "data.subset": 150,
                                "data.partition": "dirichlet", "train.aggregation": "weighted"})
    _train(cfg, tmp_path / "plain")
    _train(apply_overrides(cfg, {"secure_aggregation.enabled": True}), tmp_path / "secure")
    plain, secure = (load_file(str(tmp_path / d / "checkpoints/round_0001/global.safetensors"))
                     for d in ("plain", "secure"))
    sizes = [len(c.train) for c in prepare(cfg).partition.clients]
    step = 2 * Q.clipping_range / Q.quantization_range * max(sizes) / min(sizes)
    assert max(float((plain[k] - secure[k]).abs().max()) for k in plain) <= step + 1e-6


# -- Flower's protocol in the ServerApp -------------------------------------------------------------
def _stage(msg) -> str | None:
    records = msg.content.config_records
    return str(records["secaggplus_configs"]["stage"]) if "secaggplus_configs" in records else None


@pytest.mark.parametrize("method", ["fedavg", pytest.param("rvepfl", marks=pytest.mark.slow)])
def test_the_protocol_gives_the_in_process_engines_numbers_and_the_server_no_upload(tmp_path, method):
    cfg = tiny_cfg(method, **{"data.num_clients": 3, "data.subset": 150, "secure_aggregation.enabled": True})
    summary, _ = _flower(cfg, tmp_path)
    ref = _train(cfg, tmp_path / "ref")
    assert _csvs(tmp_path / "run") == _csvs(tmp_path / "ref")
    assert summary["secure_aggregation"]["how"].startswith("Flower's SecAgg+ protocol")
    assert ref["secure_aggregation"]["how"].startswith("the protocol's quantisation in the clear")
    facts = summary["secure_aggregation"]
    assert facts["shares"] == 3 and facts["reconstruction_threshold"] == 2
    ours, theirs = (load_file(str(tmp_path / d / "checkpoints/round_0002/global.safetensors")) for d in ("run", "ref"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    received = json.loads((tmp_path / "run/flower/received.json").read_text())
    kinds = {e["type"] for e in received}
    assert kinds == {"query", "secagg-setup", "secagg-share_keys", "secagg-collect_masked_vectors", "secagg-unmask"}
    collected = [e for e in received if e["type"] == "secagg-collect_masked_vectors"]
    assert len(collected) == 6  # 3 clients, 2 rounds
    for entry in collected:  # no array arrived: the upload came as masked integers only
        arrays = [r for r in entry["records"].values() if r["type"] == "ArrayRecord"]
        assert arrays and all(r["arrays"] == {} for r in arrays), entry
        assert "masked_params" in entry["records"]["secaggplus_configs"]["keys"]


@pytest.mark.parametrize(("method", "overrides"), [
    ("fedavg", {"train.aggregation": "weighted", "data.partition": "dirichlet"}),  # weights up to the largest split
    ("dp-fedavg", {"dp_fedavg.noise_multiplier": 0.5}),  # the server's noise on the unmasked mean
    ("fedavg", {"data.num_clients": 5, "secure_aggregation.num_shares": 3}),  # SecAgg+'s sparse graph
])
def test_the_protocol_gives_the_in_process_numbers_with_weights_server_noise_and_sparse_shares(
        tmp_path, method, overrides):
    cfg = tiny_cfg(method, **{"data.num_clients": 3, "data.subset": 150, "secure_aggregation.enabled": True,
                              **overrides})
    _flower(cfg, tmp_path)
    _train(cfg, tmp_path / "ref")
    assert _csvs(tmp_path / "run") == _csvs(tmp_path / "ref")
    ours, theirs = (load_file(str(tmp_path / d / "checkpoints/round_0002/global.safetensors")) for d in ("run", "ref"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_client_that_drops_out_after_sharing_its_keys_is_unmasked_away_and_the_round_completes(tmp_path):
    """Client 1 fails in round 2's collect stage (after the share-keys stage): the server removes
    its masks with its neighbours' shares, and the round is the in-process engine's round without
    client 1."""
    cfg = tiny_cfg("fedavg", **{"data.num_clients": 4, "data.subset": 200, "secure_aggregation.enabled": True,
                                "faults.min_clients": 3})

    def fault(node, msg):
        return "raise" if node == 101 and _stage(msg) == "collect_masked_vectors" and msg.metadata.group_id == "2" \
            else None

    _flower(cfg, tmp_path, fault=fault)
    rows = (tmp_path / "run/metrics/client_failures.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:3] for r in rows] == [["2", "1", "error"]], rows
    assert "collect_masked_vectors stage" in rows[0]
    # The in-process engine with client 1 failing in round 2 gives the same numbers.
    import rvepfl.fl.client as client_side

    real = client_side.train_client

    def failing(fed, model, store, initial_private, global_state, round_, client, *args):
        if (round_, client) == (2, 1):
            raise ValueError("injected")
        return real(fed, model, store, initial_private, global_state, round_, client, *args)

    client_side.train_client = failing
    try:
        _train(cfg, tmp_path / "ref")
    finally:
        client_side.train_client = real
    assert _csvs(tmp_path / "run") == _csvs(tmp_path / "ref")


def test_too_few_live_neighbours_stop_the_protocol_and_the_round_fails_in_one_line(tmp_path):
    cfg = tiny_cfg("fedavg", **{"data.num_clients": 3, "data.subset": 150, "secure_aggregation.enabled": True,
                                "secure_aggregation.reconstruction_threshold": 3, "faults.min_clients": 1})

    def fault(node, msg):
        return "raise" if node == 102 and _stage(msg) == "share_keys" and msg.metadata.group_id == "2" else None

    with pytest.raises(RoundFailedError, match=r"Round 2: secure aggregation stopped: .*threshold \(3 of 3 shares\)"
                       r".*client 2 \(error: share_keys stage") as info:
        _flower(cfg, tmp_path, fault=fault)
    assert "\n" not in str(info.value)
    assert json.loads((tmp_path / "run/state/progress.json").read_text())["completed_round"] == 1


def test_rounding_seeds_differ_by_round_and_client():
    seeds = {rounding_seed(0, r, c) for r in (1, 2) for c in range(3)}
    assert len(seeds) == 6 and all(0 <= s < 2**32 for s in seeds)


def test_a_client_refused_after_its_masked_upload_entered_the_sum_fails_the_round():
    from rvepfl.flower.secagg import ProtocolMean, SecureRound
    from rvepfl.methods import DataSpec, RoundContext
    from rvepfl.registry import build_method

    cfg = tiny_cfg("fedavg", **{"data.num_clients": 3, "secure_aggregation.enabled": True})
    method = build_method(cfg, DataSpec(1, 28, 10, (90, 90, 90)))
    state = method.shared_state(method.build_model())
    protocol = ProtocolMean(method)
    mean = [state[k].numpy().astype(np.float64) for k in sorted(state)]
    protocol.set_round(SecureRound(mean=mean, replies=dict.fromkeys((100, 101, 102))), {0: 100, 1: 101, 2: 102}, state)
    uploads = [Upload(c, 90, {}) for c in (0, 2)]  # client 1's reply was refused
    with pytest.raises(RoundFailedError, match=r"refused client\(s\) 1 after their masked uploads entered the sum"):
        protocol(uploads, method, RoundContext(round=3, client=None, seed=0, clients=(0, 1, 2)))
    protocol.set_round(SecureRound(mean=mean, replies=dict.fromkeys((100, 101, 102))), {0: 100, 1: 101, 2: 102}, state)
    out = protocol([Upload(c, 90, {}) for c in (0, 1, 2)], method, RoundContext(round=3, client=None, seed=0))
    assert list(out) == list(state) and all(torch.equal(out[k], state[k]) for k in state)
    mean[0][...] = np.nan
    protocol.set_round(SecureRound(mean=mean, replies=dict.fromkeys((100, 101, 102))), {0: 100, 1: 101, 2: 102}, state)
    with pytest.raises(RoundFailedError, match="non-finite"):
        protocol([Upload(c, 90, {}) for c in (0, 1, 2)], method, RoundContext(round=3, client=None, seed=0))


def test_an_upload_with_a_nan_is_not_sent_masked_and_its_client_drops_out(tmp_path, monkeypatch):
    """The server could not see a NaN inside the masked sum, so rvepfl's ClientApp refuses to send
    it: client 1 drops out of every round (after the share-keys stage) and the others' mean counts."""
    import rvepfl.fl.client as client_side
    from tests.helpers import adversary

    monkeypatch.setattr(client_side, "train_client", client_side.train_client)
    adversary.install(1, "nan")
    cfg = tiny_cfg("fedavg", **{"data.num_clients": 3, "data.subset": 150, "secure_aggregation.enabled": True,
                                "faults.min_clients": 2})
    summary, _ = _flower(cfg, tmp_path)
    rows = [r.split(",", 4) for r in (tmp_path / "run/metrics/client_failures.csv").read_text().splitlines()[1:]]
    assert [r[:3] for r in rows] == [["1", "1", "error"], ["2", "1", "error"]], rows
    assert all("NaN or infinite values" in r[4] and r[4].startswith("collect_masked_vectors stage") for r in rows)
    assert summary["status"] == "complete"
    state = load_file(str(tmp_path / "run/checkpoints/round_0002/global.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
