"""FedPer and FedRep: which entries are shared, and what a round does to body and head."""

from __future__ import annotations

import torch

from rvepfl.fl.client import prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.fl.store import STEP_KEY
from rvepfl.io import load_tensors
from rvepfl.methods import ClientData, DataSpec, RoundContext
from rvepfl.models import Classifier
from rvepfl.registry import available_methods, method_class
from rvepfl.rundir import RunDir
from tests.helpers.methods import random_data as make_random_data
from tests.helpers.methods import tiny_cfg

BODY = {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "dense.weight", "dense.bias"}
HEAD = {"out.weight", "out.bias"}


def random_data(n: int = 40) -> ClientData:
    return make_random_data(n, 4)


def test_personal_methods_are_registered():
    assert {"fedper", "fedrep"} <= set(available_methods())


def test_body_is_shared_and_head_is_private():
    for name in ("fedper", "fedrep"):
        method = method_class(name)(tiny_cfg(name), DataSpec(1, 8, 10))
        model = method.build_model()
        assert isinstance(model, Classifier)
        assert set(method.shared_state(model)) == BODY, name
        assert set(method.private_state(model)) == HEAD, name


def _record_round_start(name: str):
    """The method class ``name`` with a local_train that records the state each client starts from."""
    base = method_class(name)
    starts: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    class Recording(base):  # type: ignore[misc, valid-type]
        def local_train(self, model, data, ctx, step):
            starts[(ctx.round, ctx.client)] = {k: v.clone() for k, v in model.state_dict().items()}
            return super().local_train(model, data, ctx, step)

    return Recording, starts


def test_engine_round_shares_the_body_and_keeps_heads_apart(tmp_path):
    for name in ("fedper", "fedrep"):
        cfg = tiny_cfg(name)
        fed = prepare(cfg)
        recording, starts = _record_round_start(name)
        fed.method = recording(cfg, fed.method.spec)
        run = RunDir(tmp_path / name)
        initialise(fed, run)
        train(fed, run)
        for r in (1, 2):
            received = load_tensors(run.global_checkpoint(r - 1))
            assert set(received) == BODY
            for client in (0, 1):
                for key in BODY:  # both clients start the round from the same global body
                    assert torch.equal(starts[(r, client)][key], received[key]), (name, r, client, key)
        # Heads start equal (the common initial model) and are personal from round 2 on.
        assert all(torch.equal(starts[(1, 0)][k], starts[(1, 1)][k]) for k in HEAD)
        assert not torch.equal(starts[(2, 0)]["out.weight"], starts[(2, 1)]["out.weight"]), name
        heads = [load_tensors(run.round_dir(2) / "clients" / f"{c:04d}.safetensors") for c in (0, 1)]
        assert all(set(h) - {STEP_KEY} == HEAD for h in heads)
        assert not torch.equal(heads[0]["out.weight"], heads[1]["out.weight"]), name


def test_fedrep_head_phase_leaves_the_body_unchanged():
    cfg = tiny_cfg("fedrep", **{"personal.head_epochs": 1})
    method = method_class("fedrep")(cfg, DataSpec(1, 8, 10))
    torch.manual_seed(0)
    model = Classifier(1, 8, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data, ctx = random_data(), RoundContext(round=1, client=0, seed=0)
    # The head phase alone, exactly as FedRep's local_train runs it first.
    head = [p for k, p in model.named_parameters() if k in HEAD]
    steps = method.train_epochs(model, data, head, 1, method.batch_generator(ctx), 0, ctx)
    assert steps == 2  # 40 samples, batch 32
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in BODY)
    assert not torch.equal(before["out.weight"], after["out.weight"])
    assert all(p.requires_grad for p in model.parameters())  # the frozen body is restored


def test_fedrep_local_train_moves_both_parts_and_counts_both_phases():
    cfg = tiny_cfg("fedrep", **{"personal.head_epochs": 2, "train.local_epochs": 1})
    method = method_class("fedrep")(cfg, DataSpec(1, 8, 10))
    torch.manual_seed(0)
    model = Classifier(1, 8, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = method.local_train(model, random_data(), RoundContext(round=1, client=0, seed=0), 7)
    assert steps == 7 + 3 * 2
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in ("out.weight", "conv1.weight", "dense.weight"))


def test_fedrep_body_phase_leaves_the_head_unchanged():
    cfg = tiny_cfg("fedrep", **{"personal.head_epochs": 0})
    method = method_class("fedrep")(cfg, DataSpec(1, 8, 10))
    torch.manual_seed(0)
    model = Classifier(1, 8, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method.local_train(model, random_data(), RoundContext(round=1, client=0, seed=0), 0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in HEAD)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])


def test_fedper_trains_like_fedavg():
    """FedPer differs from FedAvg only in what it shares: the same local training, bit for bit."""
    states = []
    for name in ("fedavg", "fedper"):
        method = method_class(name)(tiny_cfg(name), DataSpec(1, 8, 10))
        torch.manual_seed(0)
        model = method.build_model()
        torch.manual_seed(1)
        method.local_train(model, random_data(), RoundContext(round=1, client=0, seed=0), 0)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
