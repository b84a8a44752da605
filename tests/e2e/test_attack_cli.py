"""`rvepfl attack` against tiny trained runs: threat models, outputs, resume and bad input."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from rvepfl.attacks.threat import Target
from rvepfl.cli import main
from rvepfl.errors import ConfigError
from tests.helpers.threads import attack_thread_counts

pytestmark = pytest.mark.slow  # the slow tier: `python -m pytest -m "not slow"` leaves it out

TINY = ["--subset", "400", "--clients", "2", "--rounds", "1", "--local-epochs", "1",
        "--batch-size", "32", "--threads", "1", "--quiet"]
FAST = ["--iterations", "3", "--evaluator-images", "300", "--quiet"]


def train(tmp_path_factory, method: str) -> Path:
    out = tmp_path_factory.mktemp(method) / "run"
    assert main(["train", "--method", method, *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Callable[[str], Path]:
    """A tiny trained run of a method, trained once per module when first asked for."""
    runs: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in runs:
            runs[method] = train(tmp_path_factory, method)
        return runs[method]

    return get


@pytest.fixture(scope="module")
def rvepfl_run(trained) -> Path:
    return trained("rvepfl")


@pytest.fixture(scope="module")
def fedavg_run(trained) -> Path:
    return trained("fedavg")


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


def test_a_run_that_used_every_image_gets_an_evaluator_that_never_saw_the_victims(fedavg_run, tmp_path,
                                                                                  monkeypatch, capsys):
    """The README's main run uses every image, so none is held out: the evaluator trains on the
    other clients' images instead, never on those of the attacked client, and is cached apart."""
    import numpy as np

    from rvepfl.attacks import base, runner
    from rvepfl.attacks import evaluator as evaluator_module

    # As if the run had used every image (it used 400 of the 10,000).
    monkeypatch.setattr(Target, "heldout", lambda self: (torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)))
    monkeypatch.setattr(base, "MIN_EVALUATOR_IMAGES", 150)  # each client holds 200 images
    trained_on: list[torch.Tensor] = []
    train = evaluator_module.train_evaluator
    monkeypatch.setattr(evaluator_module, "train_evaluator",
                        lambda x, y, **kw: trained_on.append(x) or train(x, y, **kw, epochs=1))
    target = Target(fedavg_run)
    assert runner.load_or_train_evaluator(target, 100, print, tmp_path / "cache")[0] is None  # no victim named
    evaluator, note = runner.load_or_train_evaluator(target, 100, print, tmp_path / "cache", victim=1)
    clients, d = target.fed.partition.clients, target.fed.dataset
    pool = torch.from_numpy(np.concatenate([d.train_x, d.test_x])).permute(0, 3, 1, 2).float() / 255

    def images(client: int) -> set[bytes]:
        idx = np.concatenate([clients[client].train, clients[client].test])
        return {image.numpy().tobytes() for image in pool[torch.from_numpy(idx)]}

    assert evaluator is not None and len(trained_on) == 1 and len(trained_on[0]) == 100
    trained = {image.numpy().tobytes() for image in trained_on[0]}
    assert len(trained) == 100 and trained <= images(0) and not trained & images(1)  # client 0's, not 1's
    assert note.startswith("evaluator-without-client1-mnist-100-") and "never client 1's" in note
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [note.split(":")[0]]
    # `rvepfl attack` on client 0 scores with its own such evaluator (trained for one epoch, as
    # above) and says so.
    capsys.readouterr()
    assert main(["attack", "miface", "--run", str(fedavg_run), "--out", str(tmp_path / "miface"),
                 "--iterations", "2", "--evaluator-images", "100", "--threads", "1", "--quiet"]) == 0
    assert "(evaluator-without-client0-mnist-100-" in capsys.readouterr().out


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


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors]).double()


def eval_gradient(model, x, y) -> torch.Tensor:
    """The plain gradient of the mean cross-entropy, dropout off."""
    return flat(torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters())))


def test_dp_methods_put_their_defence_into_the_observation(trained):
    nbafl = Target(trained("nbafl"))
    x, gt = nbafl.client_batch(0, 1, draw=0, seed=0)
    obs = nbafl.observe_gradient(1, 0, x, gt.labels, seed=0, draw=0)
    sigma = nbafl.method.nbafl_noise.sigma_u / nbafl.cfg.train.lr
    flat = torch.cat([g.flatten() for g in obs.gradients]).double()
    # The parameter noise sigma_u, seen through a step of size lr, swamps the gradient.
    assert float(flat.std()) == pytest.approx(sigma, rel=0.1)

    dpf = Target(trained("dp-fedavg"))
    obs = dpf.observe_gradient(1, 0, x, gt.labels, seed=0, draw=0)
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in obs.gradients))
    assert norm <= dpf.cfg.dp_fedavg.clip_norm / dpf.cfg.train.lr * (1 + 1e-6)


# -- the update threat model: a client's whole local round ------------------------------------
def test_fedavg_update_is_the_clients_adam_round_from_the_received_model(fedavg_run):
    target = Target(fedavg_run)
    x, gt = target.client_batch(0, 2, draw=0, seed=0)
    obs = target.observe_update(1, 0, x, gt.labels, local_steps=1, seed=0, draw=0)
    sent = Target(fedavg_run).model(1, 0)
    # The attacker holds the model the server sent, untouched by the client's training.
    assert [k for k, _ in obs.model.named_parameters()] == [k for k, _ in sent.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(obs.model.parameters(), sent.parameters()))
    assert obs.batch_size == 2 and obs.bounds is not None
    view, plain = flat(obs.gradients), eval_gradient(sent, x, gt.labels)
    # One step of a fresh Adam moves each weight by lr * g / (|g| + eps): at most lr, so the view
    # -update / lr is at most 1 per coordinate (float32 weights: to 1e-3), a gradient's direction
    # sign by sign rather than its size. Measured cosine with the plain gradient: 0.47 (the
    # client trained with dropout on).
    assert float(view.abs().max()) <= 1.001 and float(view.abs().max()) > 0.99
    assert float(F.cosine_similarity(view, plain, dim=0)) > 0.3
    def view_of(steps: int, draw: int) -> torch.Tensor:
        return flat(target.observe_update(1, 0, x, gt.labels, local_steps=steps, seed=0, draw=draw).gradients)

    assert torch.equal(view_of(1, 0), view)  # the same draw: the same batches, dropout and noise
    assert not torch.equal(view_of(1, 1), view) and not torch.equal(view_of(3, 0), view)
    with pytest.raises(ConfigError, match="Expected --local-steps >= 1, got 0"):
        target.observe_update(1, 0, x, gt.labels, local_steps=0, seed=0, draw=0)


def test_rvepfl_update_shows_only_the_classifier_and_leaves_the_encoder_private(rvepfl_run):
    target = Target(rvepfl_run)
    x, gt = target.client_batch(1, 1, draw=0, seed=0)
    before = {k: v.clone() for k, v in target.model(1, 1).state_dict().items()}
    obs = target.observe_update(1, 1, x, gt.labels, local_steps=2, seed=0, draw=0)
    model = target.model(1, 1)
    assert obs.model is model.classifier and obs.bounds is None  # input z, range unknown
    assert [g.shape for g in obs.gradients] == [p.shape for p in model.classifier.parameters()]
    # the client's training (encoder included) ran on a copy: the target's model is as loaded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert float(flat(obs.gradients).abs().max()) > 0.5  # the classifier did move


def test_dp_methods_put_their_defence_into_the_update(trained):
    nbafl = Target(trained("nbafl"))
    x, gt = nbafl.client_batch(0, 1, draw=0, seed=0)
    obs = nbafl.observe_update(1, 0, x, gt.labels, local_steps=2, seed=0, draw=0)
    # The upload's noise sigma_u, seen through 2 steps of size lr, swamps the update.
    sigma = nbafl.method.nbafl_noise.sigma_u / (nbafl.cfg.train.lr * 2)
    assert float(flat(obs.gradients).std()) == pytest.approx(sigma, rel=0.1)

    # DP-FedAvg's server sees the clipped update: one step (norm 0.46) is under clip_norm 1,
    # four steps are clipped to it.
    dpf = Target(trained("dp-fedavg"))
    lr, clip = dpf.cfg.train.lr, dpf.cfg.dp_fedavg.clip_norm
    one = float(flat(dpf.observe_update(1, 0, x, gt.labels, local_steps=1, seed=0, draw=0).gradients).norm())
    four = float(flat(dpf.observe_update(1, 0, x, gt.labels, local_steps=4, seed=0, draw=0).gradients).norm())
    assert one * lr < clip and four * lr * 4 == pytest.approx(clip, rel=1e-5)

    # DP-SGD's noise (multiplier 1 on a one-image batch) hides the direction too: measured
    # cosine with the plain gradient 0.002 (FedAvg's round: 0.47).
    dps = Target(trained("dp-sgd"))
    obs = dps.observe_update(1, 0, x, gt.labels, local_steps=1, seed=0, draw=0)
    plain = eval_gradient(dps.model(1, 0), x, gt.labels)
    assert abs(float(F.cosine_similarity(flat(obs.gradients), plain, dim=0))) < 0.05


def test_update_attack_recovers_fedavg_digits_and_not_rvepfl(fedavg_run, rvepfl_run, tmp_path):
    # The update's positive and negative controls, through the CLI. Measured (ig, 300 steps,
    # 1 local step, 2 images): FedAvg 10.5 and 9.0 dB, SSIM 0.13 and 0.16 (faint but visible
    # digits); RVE-PFL's classifier update gives z, scored against x: 5.6 and 5.1 dB, SSIM 0.04
    # and 0.00.
    means = {}
    for name, run in (("fedavg", fedavg_run), ("rvepfl", rvepfl_run)):
        out = tmp_path / name
        assert main(["attack", "ig", "--run", str(run), "--threat-model", "update", "--images", "2",
                     "--iterations", "300", "--evaluator-images", "300", "--threads", "1", "--quiet",
                     "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["threat_model"]["name"] == "update" and summary["settings"]["local_steps"] == 1
        table = rows(out / "scores.csv")
        assert len(table) == 2 and all(r["attack_label"] == r["label"] for r in table)
        means[name] = {k: sum(float(r[k]) for r in table) / 2 for k in ("psnr", "ssim")}
    assert means["fedavg"]["ssim"] > 0.1 > means["rvepfl"]["ssim"]
    assert means["fedavg"]["psnr"] > means["rvepfl"]["psnr"] + 3.0


def test_fedper_has_no_gradient_surface_but_can_be_stolen(trained):
    target = Target(trained("fedper"))
    x, gt = target.client_batch(0, 1, draw=0, seed=0)
    with pytest.raises(ConfigError, match="miface"):
        target.observe_gradient(1, 0, x, gt.labels, seed=0, draw=0)
    with pytest.raises(ConfigError, match="miface"):
        target.observe_update(1, 0, x, gt.labels, local_steps=1, seed=0, draw=0)
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
    from rvepfl.attacks.registry import attack

    out = tmp_path / "dlg"
    calls = {"n": 0}
    real = attack("dlg").algorithm

    def flaky(obs, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(obs, **kwargs)

    monkeypatch.setattr(attack("dlg"), "algorithm", flaky)
    args = ["attack", "dlg", "--run", str(fedavg_run), "--images", "3", "--out", str(out), *FAST]
    assert main(args) == 130
    assert json.loads((out / "summary.json").read_text())["draws_done"] == 1
    monkeypatch.setattr(attack("dlg"), "algorithm", real)
    assert main(args) == 0
    assert len(rows(out / "scores.csv")) == 3
    fresh = tmp_path / "fresh"
    assert main([*args[:-len(FAST) - 2], "--out", str(fresh), *FAST]) == 0
    keep = ["image", "label", "mse", "psnr", "ssim"]
    assert [[r[k] for k in keep] for r in rows(out / "scores.csv")] == \
        [[r[k] for k in keep] for r in rows(fresh / "scores.csv")]


def test_changing_evaluator_images_redoes_a_complete_attack(fedavg_run, tmp_path):
    out = tmp_path / "idlg"
    args = ["attack", "idlg", "--run", str(fedavg_run), "--images", "1", "--iterations", "3", "--quiet",
            "--out", str(out)]
    assert main([*args, "--evaluator-images", "300"]) == 0
    first = (out / "summary.json").read_text()
    assert main([*args, "--evaluator-images", "300"]) == 0
    assert (out / "summary.json").read_text() == first  # complete with these settings: skipped
    assert main([*args, "--evaluator-images", "350"]) == 0
    second = json.loads((out / "summary.json").read_text())
    assert second["settings"]["evaluator_images"] == 350 and second["status"] == "complete"
    assert second["settings_digest"] != json.loads(first)["settings_digest"]
    assert "trained on 350 images" in second["evaluator"]  # a new evaluator labelled the attack


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
        (["attack", "dlg", "--threat-model", "stolen"],
         "use --threat-model gradient (the default) or update, got stolen"),
        (["attack", "ig", "--threat-model", "nope"],
         "Unknown threat model 'nope': choose one of gradient, update, released"),
        (["attack", "miface", "--threat-model", "gradient"], "miface inverts a model"),
        (["attack", "miface", "--threat-model", "update"],
         "use --threat-model released (the default) or stolen, got update"),
        (["attack", "ig", "--threat-model", "update", "--local-steps", "0"], "Expected --local-steps >= 1, got 0"),
        (["attack", "ig", "--local-steps", "2"],
         "--local-steps applies to --threat-model update only, got --threat-model gradient"),
        (["attack", "dlg", "--restarts", "0"], "Expected --restarts >= 1, got 0"),
        (["attack", "dlg", "--evaluator-images", "0"],
         "Expected --evaluator-images >= 100 (the evaluator trains on 80 % of them and is tested on the other 20 %), "
         "got 0"),
        (["attack", "miface", "--evaluator-images", "2"], "Expected --evaluator-images >= 100"),
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
    assert not any(p.is_dir() for p in (fedavg_run / "attacks").glob("*"))  # no attack output written


def test_attack_on_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["attack", "dlg", "--run", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Run directory not found") and "\n" not in err


def test_attack_runs_single_threaded_unless_asked(fedavg_run, tmp_path, monkeypatch):
    """One torch thread by default, --threads N for N; the count comes back afterwards."""
    from rvepfl.attacks import runner

    args = ["attack", "idlg", "--run", str(fedavg_run), "--images", "1", "--out", str(tmp_path / "idlg"), *FAST]
    with attack_thread_counts(monkeypatch, runner, start=3) as seen:  # 3: not what either command gives
        assert main(args) == 0
        assert main([*args, "--threads", "2"]) == 0  # complete: skipped, with two threads
        assert torch.get_num_threads() == 3
    assert seen == [1, 2]
