"""`rvepfl attack mia` against tiny trained runs: outputs, skip when complete, shared reference
models, the released model's stand-in encoder and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from rvepfl.attacks.mia_run import MIA_COLUMNS
from rvepfl.attacks.threat import Target
from rvepfl.cli import main
from rvepfl.seeding import derive_seed, seed_torch
from tests.helpers.idx_format import write_mnist_dir
from tests.unit.test_security import snapshot

TINY = ["--clients", "2", "--rounds", "1", "--local-epochs", "1", "--batch-size", "32", "--threads", "1",
        "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 random 28 x 28 'digits' in MNIST's IDX layout (60 training, 20 test)."""
    return write_mnist_dir(tmp_path_factory.mktemp("idx") / "mnist")


def train(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, method: str, *extra: str) -> Path:
    out = tmp_path_factory.mktemp(method) / "run"
    assert main(["train", "--method", method, "--data-dir", str(data_dir), *extra, *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory, data_dir) -> Path:
    """FedAvg on 40 of the 80 images: 18 training images a client, 40 images no client has."""
    return train(tmp_path_factory, data_dir, "fedavg", "--subset", "40")


def test_mia_writes_scores_summary_and_roc_and_skips_when_complete(subset_run, capsys):
    assert main(["attack", "mia", "--run", str(subset_run), "--references", "2", "--threads", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for attack in ("loss", "lira"):
        assert f"{attack}: AUC " in printed and "% at 0.1 % FPR" in printed and "balanced accuracy" in printed
    out = subset_run / "attacks" / "mia-released"
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == MIA_COLUMNS and len(rows) == 36
    assert [r["member"] for r in rows] == ["1"] * 18 + ["0"] * 18
    assert all(float(r["loss_score"]) == -float(r["loss"]) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["status", "settings", "settings_digest", "run", "method", "dataset", "threat_model",
                             "attacker_model", "members", "nonmembers", "rows", "metrics", "references", "seconds"]
    assert summary["status"] == "complete" and summary["rows"] == 36
    assert summary["settings"]["references"] == 2 and summary["settings"]["images"] == 18
    for attack in ("loss", "lira"):
        assert set(summary["metrics"][attack]) == {"auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "balanced_accuracy",
                                                   "n_members", "n_nonmembers"}
        assert 0.0 <= summary["metrics"][attack]["auc"] <= 1.0
    refs = summary["references"]
    assert (refs["count"], refs["trained"], refs["epochs"], refs["images_each"]) == (2, 2, 1, 18)
    assert sorted(p.name for p in (subset_run / "attacks").glob("mia-reference-*.safetensors")) == sorted(refs["files"])
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Complete with these settings: skipped, nothing rewritten.
    before = snapshot(out)
    assert main(["attack", "mia", "--run", str(subset_run), "--references", "2", "--threads", "1", "--quiet"]) == 0
    assert snapshot(out) == before
    # Another threat model of the same run evaluates the same images: the same reference models, from the cache.
    assert main(["attack", "mia", "--run", str(subset_run), "--threat-model", "stolen", "--references", "2",
                 "--images", "10", "--threads", "1", "--quiet"]) == 0
    stolen = json.loads((subset_run / "attacks" / "mia-stolen" / "summary.json").read_text())
    assert stolen["rows"] == 20 and stolen["metrics"]["loss"]["n_members"] == 10


@pytest.mark.parametrize(("args", "message"), [
    (["--references", "1"], ("error: Expected --references >= 2 (LiRA fits a Gaussian to the reference models' "
                             "confidences), got 1")),
    (["--images", "19"], ("error: Expected --images between 1 and 18 (client 0's training images, the members), "
                          "got 19")),
    (["--threat-model", "gradient"], ("error: mia queries a model: use --threat-model released (the default) or "
                                      "stolen, got gradient")),
    (["--iterations", "5"], ("error: mia trains its reference models for the run's own train.rounds x "
                             "train.local_epochs epochs: drop --iterations")),
], ids=["references", "images", "threat", "iterations"])
def test_bad_mia_input_is_one_line_and_writes_nothing(subset_run, capsys, args, message):
    before = snapshot(subset_run.parent)
    assert main(["attack", "mia", "--run", str(subset_run), *args]) == 2
    assert capsys.readouterr().err.splitlines() == [message]
    assert snapshot(subset_run.parent) == before


def test_mia_on_a_run_that_kept_too_few_images_out_is_one_line(subset_run, monkeypatch, capsys):
    x, y = Target(subset_run).heldout()
    monkeypatch.setattr(Target, "heldout", lambda self: (x[:30], y[:30]))  # as if it had kept 30 out
    before = snapshot(subset_run.parent)
    assert main(["attack", "mia", "--run", str(subset_run), "--images", "13"]) == 2
    assert capsys.readouterr().err.splitlines() == [(
        "error: mia needs 31 images no client has (13 non-members, as many as --images, and 18 to train each reference "
        "model on, client 0's training-set size), and the run kept 30 out: lower --images, or train with a smaller "
        "data.subset")]
    assert snapshot(subset_run.parent) == before
    assert main(["attack", "mia", "--run", str(subset_run), "--images", "12", "--references", "2", "--out",
                 str(subset_run.parent / "fits"), "--quiet"]) == 0  # 12 + 18 <= 30


def test_mia_on_a_run_that_kept_no_images_out_is_one_line(tmp_path_factory, data_dir, capsys):
    run = train(tmp_path_factory, data_dir, "fedavg")  # every one of the 80 images
    before = snapshot(run.parent)
    capsys.readouterr()
    assert main(["attack", "mia", "--run", str(run)]) == 2
    assert capsys.readouterr().err.splitlines() == [(
        "error: mia needs images no client has (the non-members, and the reference models' training images), and the "
        "run kept none out: train with data.subset so that some exist")]
    assert snapshot(run.parent) == before


def test_released_rvepfl_is_queried_through_the_initial_encoder(tmp_path_factory, data_dir):
    """The attacker of RVE-PFL's released classifier lacks the victim's encoder: it feeds the
    classifier with the encoder every client started from."""
    run = train(tmp_path_factory, data_dir, "rvepfl", "--subset", "40")
    target = Target(run)
    released = target.image_model("released", 1, 0)
    seed_torch(target.cfg.seed, "init")
    initial = target.method.build_model()
    trained = Target(run).model(1, 0).encoder.state_dict()
    stand_in = target.model(1, None).encoder.state_dict()
    for key, value in initial.encoder.state_dict().items():
        assert torch.equal(value, stand_in[key])
    # the victim's encoder was trained
    assert not torch.equal(initial.encoder.state_dict()["dense.weight"], trained["dense.weight"])
    x = target.fed.client_data(0).train_x[:4].cpu()
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(0, "attack"))
        got = released(x)
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(0, "attack"))
        z = initial.eval().encoder(x, sample=True)[0]
        want = target.model(1, None).classifier(z)
    torch.testing.assert_close(got, want)
    assert torch.equal(released.module.out.weight, target.model(1, None).classifier.out.weight)
