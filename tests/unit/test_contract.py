"""The composition contract (docs/architecture.md, "Composing a method with mechanisms").

Every method x mechanism pair is trained for one tiny round or refused with its reason; stacks of
two mechanisms train or are refused in one line; and every declaration (a method's contract, a
mechanism's hooks, needs and gives) is checked against what the classes do, so a declaration
cannot drift from the code it describes.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch

from rvepfl import registry
from rvepfl.config import Config, apply_overrides
from rvepfl.errors import ConfigError
from rvepfl.fl.client import prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.maths import add_gaussian_noise, clip_by_l2
from rvepfl.mechanisms.base import Mechanism, Need
from rvepfl.mechanisms.nbafl import NbaflParams
from rvepfl.methods.base import Contract, DataSpec, Method, RoundContext, Upload
from rvepfl.methods.rvepfl import ModelParams
from rvepfl.rundir import RunDir
from rvepfl.seeding import torch_generator
from tests.helpers.methods import random_data, tiny_cfg

METHODS = list(registry.methods())
MECHANISMS = list(registry.mechanisms())

#: The pairs that are refused, and the reason each is refused for; every other pair trains.
REFUSED = {
    ("rvepfl", "dp-sgd"): "keeps part of its model private",
    ("fedper", "dp-sgd"): "keeps part of its model private",
    ("fedrep", "dp-sgd"): "trains in phases of its own",
    ("ditto", "dp-sgd"): "trains in phases of its own",
}

#: A fact each mechanism reports in summary.json's method_details, and a check of its value.
FACTS = {
    "nbafl": ("sigma_u", lambda v: v > 0),
    "dp-fedavg": ("epsilon", lambda v: v is not None and 0 < v < math.inf),
    "dp-sgd": ("clients_accounted", lambda v: v == 2),
}

#: The hooks a method's contract speaks for: overriding one contradicts the default value.
LOOP_HOOKS = ("local_train", "train_epochs", "local_optimiser", "local_batches", "batches_per_epoch",
              "planned_steps")
SERVER_HOOKS = ("aggregate", "receive")
UPLOAD_HOOKS = ("upload", "uploaded_update")


def _spec(cfg: Config) -> DataSpec:
    return DataSpec(1, 8, 10, (60,) * cfg.data.num_clients)  # 8x8 images, as random_data's


def _train_one_round(spec: str, tmp_path, **overrides) -> dict:
    cfg = tiny_cfg(spec, **{"train.rounds": 1, "data.subset": 120, **overrides})
    fed = prepare(cfg)
    run = RunDir(tmp_path / "run")
    initialise(fed, run)
    return train(fed, run)


# -- every pair ----------------------------------------------------------------------------------------
def test_the_refusal_table_names_only_real_pairs():
    assert set(REFUSED) <= {(m, k) for m in METHODS for k in MECHANISMS}
    assert set(FACTS) == set(MECHANISMS)


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("method", METHODS)
def test_every_pair_trains_one_round_or_is_refused_with_its_reason(method, mechanism, tmp_path):
    spec = f"{method}+{mechanism}"
    if (method, mechanism) in REFUSED:
        with pytest.raises(ConfigError) as info:
            registry.method_class(spec)
        message = str(info.value)
        assert message.startswith(f"{mechanism} cannot wrap {method}: ") and "\n" not in message
        assert REFUSED[method, mechanism] in message
        return
    summary = _train_one_round(spec, tmp_path)
    assert summary["status"] == "complete" and summary["method"] == spec
    key, ok = FACTS[mechanism]
    assert ok(summary["method_details"][key]), summary["method_details"]
    assert all(math.isfinite(v) for row in summary["final"].values() for v in row.values()), summary["final"]


# -- stacks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["fedavg+dp-sgd+nbafl", "fedavg+dp-sgd+dp-fedavg"])
def test_a_stack_of_two_mechanisms_trains_and_reports_both(spec, tmp_path):
    summary = _train_one_round(spec, tmp_path)
    assert summary["status"] == "complete" and summary["method"] == spec
    details = summary["method_details"]
    for name in spec.split("+")[1:]:
        section = registry.mechanisms()[name].section
        key, ok = FACTS[name]
        assert ok(details[section][key]), details  # each under its own section: their keys overlap
    assert registry.method_class(spec).contract.loop == "privatised"
    assert not registry.method_class(spec).bf16_parity


def test_a_stack_uploads_the_outer_transform_of_the_inner_upload():
    """fedavg+dp-sgd+nbafl: DP-SGD's upload (the trained state, with its accounting), then NbAFL's
    clipping and noise; both mechanisms' info travels with it."""
    cfg = apply_overrides(tiny_cfg("fedavg+dp-sgd+nbafl"), {"nbafl.clip_norm": 1.0})
    method = registry.build_method(cfg, _spec(cfg))
    model = method.build_model()
    ctx = RoundContext(round=1, client=1, seed=3)
    method.local_train(model, random_data(64, 8), ctx, 0)
    sent = method.upload(model, ctx, 64, {})
    clipped, norm = clip_by_l2(method.shared_state(model), 1.0)
    expected = add_gaussian_noise(clipped, method.nbafl_noise.sigma_u, torch_generator(3, "noise", 1, 1))
    assert all(torch.equal(sent.state[k], expected[k]) for k in expected)
    assert sent.info["norm_before_clip"] == pytest.approx(norm) and sent.info["dp_sgd"]["client"] == 1


@pytest.mark.parametrize("spec, message", [
    ("fedavg+nbafl+dp-sgd", "dp-sgd cannot wrap fedavg+nbafl: its per-sample clipping and noise come before any "
                            "transform of the upload: name it first after the method (METHOD+dp-sgd+MECHANISM)"),
    ("fedavg+nbafl+dp-fedavg", "dp-fedavg cannot wrap fedavg+nbafl: its server replaces the mean of the uploads, "
                               "and this method aggregates in a way of its own"),
    ("fedavg+dp-fedavg+nbafl", "nbafl cannot wrap fedavg+dp-fedavg: it clips and noises the uploaded parameters, "
                               "and this method uploads an update"),
    ("rvepfl+nbafl+dp-sgd", "dp-sgd cannot wrap rvepfl+nbafl: it clips and noises every parameter's gradient, and "
                            "this method keeps part of its model private, where noise buys no privacy: protect its "
                            "shared part with nbafl or dp-fedavg"),
    ("fedavg+nbafl+nbafl", "nbafl appears twice in method 'fedavg+nbafl+nbafl': name each mechanism once"),
    ("fedavg+dp-sgd+laplace", "Unknown mechanism 'laplace' in method 'fedavg+dp-sgd+laplace': choose one of nbafl, "
                              "dp-fedavg, dp-sgd"),
    ("fedavg+", "Unknown mechanism '' in method 'fedavg+': choose one of nbafl, dp-fedavg, dp-sgd"),
    ("nbafl+dp-sgd", "Expected METHOD+MECHANISM with a method first (rvepfl, fedavg, fedper, fedrep, ditto), "
                     "got 'nbafl+dp-sgd'"),
])
def test_a_stack_that_cannot_compose_is_one_line(spec, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), {"method": spec})
    assert str(info.value) == message


# -- the declarations match the code -----------------------------------------------------------------------
def _overrides(cls: type, hooks: tuple[str, ...]) -> list[str]:
    return [h for h in hooks if getattr(cls, h) is not getattr(Method, h)]


@pytest.mark.parametrize("name", METHODS)
def test_a_methods_contract_says_what_the_class_does(name):
    cls = registry.methods()[name]
    contract = cls.contract
    cfg = tiny_cfg(name)
    method = cls(cfg, _spec(cfg))
    assert contract.private == any(not method.is_shared(k) for k in method.build_model().state_dict())
    assert (contract.loop == "standard") == (not _overrides(cls, LOOP_HOOKS)), _overrides(cls, LOOP_HOOKS)
    assert contract.loop in ("standard", "phased")  # "privatised" is DP-SGD's, never a method's own
    assert (contract.server == "mean") == (not _overrides(cls, SERVER_HOOKS)), _overrides(cls, SERVER_HOOKS)
    assert (contract.uploads == "state") == (not _overrides(cls, UPLOAD_HOOKS)), _overrides(cls, UPLOAD_HOOKS)
    assert contract.upload == "plain"  # "transformed" is what a mechanism makes of an upload


@pytest.mark.parametrize("name", MECHANISMS)
def test_a_mechanism_overrides_the_hooks_it_declares_and_no_other(name):
    mechanism = registry.mechanisms()[name]
    hooks = {h for h, value in vars(mechanism).items()
             if inspect.isfunction(value) and hasattr(Method, h) and not h.startswith("__")}
    assert hooks == set(mechanism.hooks)
    assert all(isinstance(need, Need) for need in mechanism.needs)
    assert set(mechanism.gives) <= {f.name for f in dataclasses.fields(Contract)}


def _pair(name: str, overrides: dict | None = None) -> tuple[Method, Method]:
    """FedAvg and ``name`` on FedAvg, built alike (same config, same data spec)."""
    cfg = apply_overrides(tiny_cfg(name), {"data.num_clients": 4, "train.rounds": 10, **(overrides or {})})
    return registry.build_method(apply_overrides(cfg, {"method": "fedavg"}), _spec(cfg)), \
        registry.build_method(cfg, _spec(cfg))


@pytest.mark.parametrize("name", MECHANISMS)
def test_what_a_mechanism_gives_is_what_it_does_to_the_upload(name):
    plain, wrapped = _pair(name)
    torch.manual_seed(0)
    model = plain.build_model()
    received = {k: torch.zeros_like(v) for k, v in plain.shared_state(model).items()}
    ctx = RoundContext(round=1, client=0, seed=0)
    a, b = plain.upload(model, ctx, 60, received), wrapped.upload(model, ctx, 60, received)
    same = a.state.keys() == b.state.keys() and all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    contract = wrapped.contract
    assert same == (contract.upload == "plain" and contract.uploads == "state")
    read = wrapped.uploaded_update(b.state, received, list(b.state))
    if contract.uploads == "update":  # the server reads the update off the upload itself
        assert all(torch.equal(read[k], b.state[k].double()) for k in read)


@pytest.mark.parametrize("name", MECHANISMS)
def test_what_a_mechanism_gives_is_what_it_does_to_the_aggregate(name):
    # NbAFL adds server noise only when the uplink noise falls short (L = 1, T = 10 here)
    plain, wrapped = _pair(name, {"nbafl.exposures": 1, "nbafl.epsilon": 1.0})
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in plain.build_model().state_dict().items()}
    ups = [Upload(c, 60, {k: v + c for k, v in state.items()}, {}) for c in range(4)]
    server = RoundContext(round=1, client=None, seed=0, clients=(0, 1, 2, 3))
    a, b = plain.aggregate(iter(ups), state, server), wrapped.aggregate(iter(ups), state, server)
    same = all(torch.equal(a[k], b[k]) for k in a)
    assert same == (wrapped.contract.server == "mean")


STACKS = ["fedavg+dp-sgd+nbafl", "fedavg+dp-sgd+dp-fedavg"]


@pytest.mark.parametrize("spec", [f"{m}+{k}" for m in METHODS for k in MECHANISMS if (m, k) not in REFUSED] + STACKS)
def test_a_mechanism_keeps_its_state_in_attributes_of_its_own(spec):
    """A mechanism and the method share one object: the mechanism's attributes begin with its
    section, and the method sets none of those."""
    cls = registry.method_class(spec)
    cfg = tiny_cfg(spec)
    method_name = spec.split("+")[0]
    alone = registry.method_class(method_name)(apply_overrides(cfg, {"method": method_name}), _spec(cfg))
    composed = cls(cfg, _spec(cfg))
    prefixes = tuple(f"{registry.mechanisms()[m].section}_" for m in cls.mechanisms)
    added = set(vars(composed)) - set(vars(alone))
    assert added and all(a.startswith(prefixes) for a in added), added
    assert not any(a.startswith(prefixes) for a in vars(alone))


# -- typed settings --------------------------------------------------------------------------------------
def test_settings_are_read_typed_from_the_section_of_the_class_that_declares_them():
    cfg = apply_overrides(Config(), {"method": "rvepfl+nbafl", "nbafl.epsilon": 5.0, "model.kl_weight": 0.5})
    method = registry.build_method(cfg, _spec(cfg))
    assert method.settings(NbaflParams).epsilon == 5.0 and method.settings(ModelParams).kl_weight == 0.5
    with pytest.raises(TypeError, match=r"^RvePfl reads no section of NbaflParams$"):
        registry.build_method(Config(), _spec(cfg)).settings(NbaflParams)


def test_a_mechanism_alone_is_a_mechanism_on_its_standalone_method():
    for name, mechanism in registry.mechanisms().items():
        assert issubclass(mechanism, Mechanism)
        assert registry.method_class(name).contract == registry.method_class(f"{mechanism.standalone}+{name}").contract
