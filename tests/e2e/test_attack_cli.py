"""`rvepfl attack` against tiny trained runs: threat models, outputs, resume and bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from rvepfl.attacks.threat import Target
from rvepfl.cli import main
from rvepfl.errors import ConfigError

TINY = ["--subset", "400", "--clients", "2", "--rounds", "1", "--local-epochs", "1",
        "--batch-size", "32", "--threads", "1", "--quiet"]
FAST = ["--iterations", "3", "--evaluator-images", "300", "--quiet"]


def train(tmp_path_factory, method: str) -> Path:
    out = tmp_path_factory.mktemp(method) / "run"
    assert main(["train", "--method", method, *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def rvepfl_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory, "rvepfl")


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory, "fedavg")


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_heldout_images_are_exactly_those_no_client_has(fedavg_run):
    target = Target(fedavg_run)
    x, y = target.heldout()
    assert len(y) == 10_000 - 400  # the bundled MNIST subset has 10,000 images; the run used 400
    assert x.shape[1:] == (1, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    used = torch.cat([target.fed.client_data(c).train_x for c in range(2)] +
                     [target.fed.client_data(c).test_x for c in range(2)])
    used_pixels = (used * 0.3081 + 0.1307).clamp(0, 1).flatten(1)
    # No held-out image equals a client's image (compare a sample: all 400 used vs 300 held out).
    dist = torch.cdist(x[:300].flatten(1), used_pixels)
    assert float(dist.min()) > 1e-3


def test_fedavg_gradient_observation_is_the_plain_gradient(fedavg_run):
    target = Target(fedavg_run)
    x, gt = target.client_batch(0, 2, draw=0, seed=0)
    obs = target.observe_gradient(1, 0, x, gt.labels, seed=0, draw=0)
    model = target.model(1, 0)
    expected = torch.autograd.grad(F.cross_entropy(model(x), gt.labels), list(model.parameters()))
    assert obs.batch_size == 2 and obs.input_shape == (1, 28, 28)
    for got, want in zip(obs.gradients, expected):
        torch.testing.assert_close(got, want)
    assert obs.bounds is not None  # raw images: the attacker knows the pixel range


def test_rvepfl_server_sees_only_the_classifier_gradient(rvepfl_run):
    target = Target(rvepfl_run)
    x, gt = target.client_batch(1, 1, draw=0, seed=0)
    obs = target.observe_gradient(1, 1, x, gt.labels, seed=0, draw=0)
    classifier = target.model(1, 1).classifier
    assert [g.shape for g in obs.gradients] == [p.shape for p in classifier.parameters()]
    assert sum(p.numel() for p in obs.model.parameters()) == sum(p.numel() for p in classifier.parameters())
    assert obs.bounds is None  # z's range is unknown to the attacker


def test_dp_methods_put_their_defence_into_the_observation(tmp_path_factory):
    nbafl = Target(train(tmp_path_factory, "nbafl"))
    x, gt = nbafl.client_batch(0, 1, draw=0, seed=0)
    obs = nbafl.observe_gradient(1, 0, x, gt.labels, seed=0, draw=0)
    sigma = nbafl.method.noise.sigma_u / nbafl.cfg.train.lr
    flat = torch.cat([g.flatten() for g in obs.gradients]).double()
    # The parameter noise sigma_u, seen through a step of size lr, swamps the gradient.
    assert float(flat.std()) == pytest.approx(sigma, rel=0.1)

    dpf = Target(train(tmp_path_factory, "dp-fedavg"))
    obs = dpf.observe_gradient(1, 0, x, gt.labels, seed=0, draw=0)
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in obs.gradients))
    assert norm <= dpf.cfg.dp_fedavg.clip_norm / dpf.cfg.train.lr * (1 + 1e-6)


def test_fedper_has_no_gradient_surface_but_can_be_stolen(tmp_path_factory):
    target = Target(train(tmp_path_factory, "fedper"))
    x, gt = target.client_batch(0, 1, draw=0, seed=0)
    with pytest.raises(ConfigError, match="miface"):
        target.observe_gradient(1, 0, x, gt.labels, seed=0, draw=0)
    with pytest.raises(ConfigError, match="stolen"):
        target.inversion_model("released", 1, 0)
    model, _ = target.inversion_model("stolen", 1, 0)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_attack_writes_scores_summary_grid_and_is_deterministic(fedavg_run, tmp_path):
    out1, out2 = tmp_path / "a", tmp_path / "b"
    for out in (out1, out2):
        assert main(["attack", "idlg", "--run", str(fedavg_run), "--images", "2", "--out", str(out), *FAST]) == 0
    table = rows(out1 / "scores.csv")
    assert len(table) == 2
    assert set(table[0]) >= {"image", "label", "attack_label", "mse", "psnr", "ssim", "evaluator_label"}
    assert all(r["attack_label"] == r["label"] for r in table)  # iDLG reads the label exactly
    summary = json.loads((out1 / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["threat_model"]["name"] == "gradient"
    assert summary["evaluator_test_accuracy"] is not None
    assert (out1 / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out1 / "scores.csv").read_text() .split("\n")[1].rsplit(",", 1)[0] == \
        (out2 / "scores.csv").read_text().split("\n")[1].rsplit(",", 1)[0]  # all but the seconds


def test_interrupted_attack_resumes(fedavg_run, tmp_path, monkeypatch):
    from rvepfl.attacks import runner

    out = tmp_path / "dlg"
    calls = {"n": 0}
    real = runner.GRADIENT_ATTACKS["dlg"]

    def flaky(obs, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(obs, **kwargs)

    monkeypatch.setitem(runner.GRADIENT_ATTACKS, "dlg", flaky)
    args = ["attack", "dlg", "--run", str(fedavg_run), "--images", "3", "--out", str(out), *FAST]
    assert main(args) == 130
    assert json.loads((out / "summary.json").read_text())["draws_done"] == 1
    monkeypatch.setitem(runner.GRADIENT_ATTACKS, "dlg", real)
    assert main(args) == 0
    assert len(rows(out / "scores.csv")) == 3
    fresh = tmp_path / "fresh"
    assert main([*args[:-len(FAST) - 2], "--out", str(fresh), *FAST]) == 0
    keep = ["image", "label", "mse", "psnr", "ssim"]
    assert [[r[k] for k in keep] for r in rows(out / "scores.csv")] == \
        [[r[k] for k in keep] for r in rows(fresh / "scores.csv")]


def test_miface_released_and_stolen(rvepfl_run, tmp_path):
    for threat in ("released", "stolen"):
        out = tmp_path / threat
        assert main(["attack", "miface", "--run", str(rvepfl_run), "--threat-model", threat,
                     "--out", str(out), *FAST]) == 0
        table = rows(out / "scores.csv")
        assert [int(r["class"]) for r in table] == list(range(10))
        assert all(0.0 <= float(r["nearest_ssim"]) <= 1.0 + 1e-6 for r in table)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["attack", "nope"], "Unknown attack 'nope'"),
        (["attack", "dlg", "--threat-model", "stolen"], "use --threat-model gradient"),
        (["attack", "miface", "--threat-model", "gradient"], "miface inverts a model"),
        (["attack", "idlg", "--batch-size", "2"], "iDLG reads the label of a single image"),
        (["attack", "dlg", "--round", "7"], "Expected --round between 1 and 1"),
        (["attack", "dlg", "--client", "5"], "Expected --client between 0 and 1"),
        (["attack", "dlg", "--images", "3", "--batch-size", "2"], "multiple of --batch-size 2"),
    ],
)
def test_bad_attack_input_is_one_line(fedavg_run, capsys, args, message):
    code = main([*args[:2], "--run", str(fedavg_run), *args[2:], "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (fedavg_run / "attacks" / "nope").exists()


def test_attack_on_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["attack", "dlg", "--run", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Run directory not found") and "\n" not in err
