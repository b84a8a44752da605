"""train.precision: resolution, the mixed-precision training loop and evaluation (rvepfl.precision).

The models here are built for 8x8 images, so a bfloat16 step is cheap even on a CPU that
emulates it; the end-to-end run is in tests/e2e/test_cli.py.
"""

from __future__ import annotations

import pytest
import torch

from rvepfl import precision as precision_module
from rvepfl import registry
from rvepfl.config import apply_overrides, config_hash, load_config
from rvepfl.errors import ConfigError
from rvepfl.fl.client import evaluate
from rvepfl.methods.base import DataSpec, Method, RoundContext
from rvepfl.precision import FLOAT32, Precision, resolve
from tests.helpers.methods import random_data, tiny_cfg

CPU = torch.device("cpu")
SPEC = DataSpec(1, 8, 10, (64, 64))


def _trained(method_name: str, precision: Precision) -> tuple[Method, torch.nn.Module]:
    method = registry.build_method(tiny_cfg(method_name), SPEC)
    method.precision = precision
    torch.manual_seed(0)
    model = method.build_model()
    method.local_train(model, random_data(64, 16), RoundContext(round=1, client=0, seed=0), 0)
    return method, model


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().float().reshape(-1) for v in model.state_dict().values()])


def test_float32_and_16_mixed_off_cuda() -> None:
    assert resolve("32", CPU, parity=True) == Precision("32", "32", "float32 asked for", "cpu")
    with pytest.raises(ConfigError, match=r'CUDA device for `train.precision = "16-mixed"`.*use "bf16-mixed" or "32"'):
        resolve("16-mixed", CPU, parity=True)


@pytest.mark.parametrize(("flags", "parity", "ran", "why"), [
    ((), True, "32", "no native bfloat16"),
    (("amx_bf16",), False, "32", "has not been measured"),
    (("avx512_bf16",), True, "bf16-mixed", "parity with float32 is measured"),
])
def test_auto_needs_native_bf16_and_measured_parity(monkeypatch: pytest.MonkeyPatch, flags, parity, ran, why) -> None:
    monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda: flags)
    p = resolve("auto", CPU, parity=parity, method="fedavg")
    assert (p.name, p.requested) == (ran, "auto")
    assert why in p.reason
    assert p.summary() == {"requested": "auto", "ran": ran, "reason": p.reason}


def test_bf16_asked_for_on_a_cpu_without_it_runs_and_says_it_is_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda: ())
    p = resolve("bf16-mixed", CPU, parity=False)
    assert p.name == "bf16-mixed" and p.dtype is torch.bfloat16 and "emulated" in p.reason


def test_the_config_key_and_its_hash() -> None:
    base = load_config(None)
    assert base.train.precision == "auto"
    # "auto" is the default: left out of the hash, so runs made before the key existed keep theirs
    assert config_hash(apply_overrides(base, {"train.precision": "auto"})) == config_hash(base)
    assert config_hash(apply_overrides(base, {"train.precision": "bf16-mixed"})) != config_hash(base)
    assert apply_overrides(base, {"train.precision": 32}).train.precision == "32"  # an integer 32 means "32"
    with pytest.raises(ConfigError, match=r"Expected `train.precision` to be one of '32', 'bf16-mixed'"):
        apply_overrides(base, {"train.precision": "fp8"})


@pytest.mark.parametrize("name", ["fedavg", "rvepfl", *(pytest.param(n, marks=pytest.mark.slow)
                                                       for n in ("nbafl", "dp-sgd", "ditto", "fedrep"))])
def test_mixed_training_keeps_float32_weights_and_is_repeatable(name: str) -> None:
    bf16 = Precision("bf16-mixed", "bf16-mixed", "test", "cpu")
    _, a = _trained(name, bf16)
    _, b = _trained(name, bf16)
    _, full = _trained(name, FLOAT32)
    assert all(v.dtype == torch.float32 for v in a.state_dict().values() if v.is_floating_point())
    assert torch.equal(_flat(a), _flat(b))  # same seed and precision: the same weights
    assert not torch.equal(_flat(a), _flat(full))  # autocast took part: the arithmetic differs
    assert torch.isfinite(_flat(a)).all()


def test_the_forward_pass_runs_in_bfloat16_under_autocast() -> None:
    method = registry.build_method(tiny_cfg("fedavg"), SPEC)
    model = method.build_model()
    x = random_data(4, 1).train_x
    with Precision("bf16-mixed", device_type="cpu").autocast():
        assert model(x).dtype is torch.bfloat16
    with FLOAT32.autocast():
        assert model(x).dtype is torch.float32


def test_16_mixed_scales_the_loss() -> None:
    # CUDA only through the config; the loop's loss scaling is the same code on a CPU
    _, model = _trained("fedavg", Precision("16-mixed", "16-mixed", "test", "cpu"))
    assert Precision("16-mixed", device_type="cpu").grad_scaler().is_enabled()
    assert not FLOAT32.grad_scaler().is_enabled()
    assert torch.isfinite(_flat(model)).all()


def test_evaluation_runs_under_the_precision_and_reports_float_metrics() -> None:
    _, model = _trained("fedavg", FLOAT32)
    data = random_data(64, 32)
    full = evaluate(model, data.test_x, data.test_y, 10)
    mixed = evaluate(model, data.test_x, data.test_y, 10, precision=Precision("bf16-mixed", device_type="cpu"))
    assert set(full) == set(mixed) and all(isinstance(v, float) for v in mixed.values())
    assert mixed["loss"] == pytest.approx(full["loss"], rel=0.05)
    assert mixed["loss"] != full["loss"]


def test_a_composition_has_parity_only_on_the_methods_its_mechanism_was_measured_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    method, mechanism = registry.methods()["rvepfl"], registry.mechanisms()["dp-fedavg"]
    assert method.bf16_parity and mechanism.bf16_parity_on == ("fedavg",)
    # rvepfl alone and dp-fedavg (on fedavg) were measured; rvepfl+dp-fedavg was not
    assert registry._compose(registry.methods()["fedavg"], mechanism, "dp-fedavg").bf16_parity
    assert not registry._compose(method, mechanism, "rvepfl+dp-fedavg").bf16_parity
    # what was measured, and no other (read off each class itself, as the engine does); a stack never
    specs = [*registry.available_methods(), "rvepfl+nbafl", "rvepfl+dp-fedavg", "fedper+nbafl", "fedavg+dp-sgd+nbafl"]
    measured = sorted(spec for spec in specs if vars(registry.method_class(spec)).get("bf16_parity", False))
    assert measured == ["dp-fedavg", "fedavg", "nbafl", "rvepfl", "rvepfl+nbafl"]
    monkeypatch.setattr(mechanism, "bf16_parity_on", ("fedavg", "rvepfl"))
    assert registry._compose(method, mechanism, "rvepfl+dp-fedavg").bf16_parity
    assert "bf16_parity" not in vars(registry.methods()["fedper"])
