"""`rvepfl compare`: the compare file, the runs on identical partitions, skip/resume, the outputs."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rvepfl.cli import main
from rvepfl.config import Config, apply_overrides
from rvepfl.errors import CheckpointError, ConfigError
from rvepfl.experiments.results import AccuracyCell, Estimate
from rvepfl.experiments.runner import run_suite
from rvepfl.experiments.spec import Suite, default_out, load_suite, suite_from_dict
from rvepfl.experiments.tables import accuracy_markdown
from rvepfl.fl.client import prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.registry import available_methods
from rvepfl.rundir import RunDir
from tests.helpers.suites import toml_text

BASE = {"threads": 1, "workers": 1, "device": "cpu",
        "data": {"subset": 200, "num_clients": 2},
        "train": {"rounds": 1, "local_epochs": 1, "batch_size": 32}}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    """Every registered method on MNIST, seeds 0 and 1, one tiny round, through the CLI."""
    root = tmp_path_factory.mktemp("compare")
    (root / "c.toml").write_text(toml_text(available_methods(), [0, 1]))
    assert main(["compare", "--config", str(root / "c.toml"), "--out", str(root / "out"), "--quiet"]) == 0
    return root


@pytest.mark.slow  # a whole compare run (the module fixture)
def test_table_csv_has_every_method_and_dataset(compared):
    rows = read_csv(compared / "out" / "table.csv")
    assert list(rows[0]) == ["dataset", "method", "seeds", "mean_acc", "std_acc", "acc_seed0", "acc_seed1"]
    assert [(r["dataset"], r["method"]) for r in rows] == [("mnist", m) for m in available_methods()]
    for r in rows:
        accs = [float(r["acc_seed0"]), float(r["acc_seed1"])]
        assert r["seeds"] == "2" and all(0.0 <= a <= 1.0 for a in accs)
        assert float(r["mean_acc"]) == pytest.approx(np.mean(accs))
        assert float(r["std_acc"]) == pytest.approx(np.std(accs, ddof=1))
        final = read_csv(compared / "out" / "runs" / f"mnist-{r['method']}-seed1" / "metrics" / "epoch_testing.csv")
        assert float(r["acc_seed1"]) == float(final[-1]["ACC"])


@pytest.mark.slow  # a whole compare run (the module fixture)
def test_table_md_and_plot(compared):
    text = (compared / "out" / "table.md").read_text()
    assert "| method | mnist |" in text
    for method in available_methods():
        assert f"| {method} | " in text
    assert "ddof = 1" in text
    margin = "mnist: RVE-PFL margin over NbAFL:" in text
    assert margin == ("nbafl" in available_methods())
    png = (compared / "out" / "accuracy_mnist.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert (compared / "out" / "compare.toml").read_text() == (compared / "c.toml").read_text()


@pytest.mark.slow  # a whole compare run (the module fixture)
def test_every_method_ran_on_the_same_partition(compared):
    for seed in (0, 1):
        arrays = []
        for method in available_methods():
            with np.load(compared / "out" / "runs" / f"mnist-{method}-seed{seed}" / "partition.npz") as f:
                arrays.append({k: f[k] for k in f.files})
        for other in arrays[1:]:
            assert other.keys() == arrays[0].keys()
            assert all(np.array_equal(other[k], arrays[0][k]) for k in other)
    with np.load(compared / "out" / "runs" / "mnist-fedavg-seed0" / "partition.npz") as a, \
         np.load(compared / "out" / "runs" / "mnist-fedavg-seed1" / "partition.npz") as b:
        assert any(not np.array_equal(a[k], b[k]) for k in a.files)  # another seed, another partition


@pytest.mark.slow  # a whole compare run (the module fixture)
def test_second_invocation_skips_every_run(compared):
    runs = compared / "out" / "runs"
    before = mtimes(runs)
    table_before = (compared / "out" / "table.csv").read_text()
    report = run_suite(load_suite(compared / "c.toml"), compared / "out")
    assert set(report.statuses.values()) == {"skipped"}
    assert mtimes(runs) == before
    assert (compared / "out" / "table.csv").read_text() == table_before


@pytest.mark.slow  # a whole compare run (the module fixture)
def test_changed_config_is_refused_before_training(compared, tmp_path):
    (tmp_path / "c.toml").write_text(toml_text(available_methods(), [0, 1], rounds=2))
    before = mtimes(compared / "out" / "runs")
    with pytest.raises(CheckpointError, match="another configuration.*another --out"):
        run_suite(load_suite(tmp_path / "c.toml"), compared / "out")
    assert mtimes(compared / "out" / "runs") == before


class _StopAfterRound1:
    def round_start(self, *args): ...
    def client_done(self, *args): ...

    def round_done(self, round_, means, seconds):
        if round_ == 1:
            raise KeyboardInterrupt


def test_interrupted_compare_resumes_and_added_methods_run(tmp_path):
    (tmp_path / "c.toml").write_text(toml_text(["fedavg", "fedper"], [0], rounds=2))
    spec = load_suite(tmp_path / "c.toml")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_suite(spec, out, progress=lambda prefix: _StopAfterRound1())
    assert RunDir(out / "runs" / "mnist-fedavg-seed0").read_progress()["completed_round"] == 1
    assert not (out / "runs" / "mnist-fedper-seed0").exists()

    report = run_suite(spec, out)
    assert report.statuses == {"mnist-fedavg-seed0": "resumed", "mnist-fedper-seed0": "trained"}
    # The resumed run gives the numbers of an uninterrupted one.
    fed = prepare(spec.runs[0].cfg)
    straight = RunDir(tmp_path / "straight")
    initialise(fed, straight)
    train(fed, straight)
    for name in ("epoch_testing.csv", "client_testing.csv", "general_test_clients.csv"):
        assert read_csv(out / "runs" / "mnist-fedavg-seed0" / "metrics" / name) == read_csv(straight.metrics / name)

    # Adding a method later trains only that method; the table grows.
    (tmp_path / "c.toml").write_text(toml_text(["fedavg", "fedper", "fedrep"], [0], rounds=2))
    report = run_suite(load_suite(tmp_path / "c.toml"), out)
    assert report.statuses == {"mnist-fedavg-seed0": "skipped", "mnist-fedper-seed0": "skipped",
                               "mnist-fedrep-seed0": "trained"}
    assert [r["method"] for r in read_csv(out / "table.csv")] == ["fedavg", "fedper", "fedrep"]
    assert read_csv(out / "table.csv")[0]["std_acc"] == ""  # one seed: no standard deviation


def test_directory_stopped_during_creation_is_recreated(tmp_path):
    (tmp_path / "c.toml").write_text(toml_text(["fedavg"], [0]))
    spec = load_suite(tmp_path / "c.toml")
    run = tmp_path / "out" / "runs" / "mnist-fedavg-seed0"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("half")
    assert run_suite(spec, tmp_path / "out").statuses == {"mnist-fedavg-seed0": "trained"}
    # Killed while writing the first progress marker: state/ holds only its temporary file.
    (run / "state" / "progress.json").unlink()
    shutil.rmtree(run / "state" / "clients")
    (run / "state" / ".progress.json.k1l2x3y4.tmp").write_text('{"completed_ro')
    for path in [*run.glob("*.json"), *run.glob("metrics/*"), *run.rglob("*.safetensors")]:
        if path.name != "partition.json":
            path.unlink()
    assert run_suite(spec, tmp_path / "out").statuses == {"mnist-fedavg-seed0": "trained"}
    assert not list(run.rglob("*.tmp"))
    shutil.rmtree(run)
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an rvepfl run directory"):
        run_suite(spec, tmp_path / "out")


def valid(**changes) -> dict:
    values = {"name": "t", "methods": ["rvepfl", "fedavg"], "datasets": ["mnist"], "seeds": [0, 1], "base": BASE}
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


@pytest.mark.parametrize("changes, match", [
    ({"extra": 1}, "Unknown compare key `extra`: allowed: name, methods"),
    ({"methods": ["rvepfl", "nope"]}, "Unknown method 'nope' in `methods`: available: rvepfl, fedavg"),
    ({"methods": []}, "non-empty list of method names"),
    ({"methods": ["fedavg", "fedavg"]}, "without repeats"),
    ({"datasets": ["svhn"]}, "Unknown dataset 'svhn' in `datasets`: available: mnist, fmnist, cifar10"),
    ({"seeds": None}, "Expected `seeds` to be a non-empty list of integers >= 0, got None"),
    ({"seeds": [0, -1]}, "integers >= 0"),
    ({"seeds": [True]}, "integers >= 0"),
    ({"seeds": [1, 1]}, "without repeats"),
    ({"name": "a/b"}, "Expected `name`"),
    ({"base": {"method": "fedavg"}}, r"`base.method` is set by the compare file's `methods`"),
    ({"base": {"seed": 3}}, r"`base.seed` is set by the compare file's `seeds`"),
    ({"base": {"data": {"dataset": "fmnist"}}}, r"`base.data.dataset` is set by the compare file's `datasets`"),
    ({"base": {"train": {"roundz": 2}}}, r"\[base\]: Unknown config key `train.roundz`: did you mean `rounds`"),
    ({"base": {"train": {"rounds": 0}}}, r"\[base\]: Expected `train.rounds` >= 1, got 0"),
    ({"base": 3}, "Expected `base` to be a table"),
    ({"overrides": {"fedavg": {"data": {"subset": 100}}}}, r"`overrides.fedavg.data` is not allowed: per-method"),
    ({"overrides": {"fedper": {"train": {"batch_size": 64}}}}, r"`\[overrides.fedper\]` names no entry of `methods`"),
    ({"overrides": {"fedavg": {"train": {"batch_size": 0}}}},
     r"\[overrides.fedavg\]: Expected `train.batch_size` >= 1"),
    ({"overrides": {"fedavg": {"seed": 1}}}, r"`overrides.fedavg.seed` is set by"),
    ({"dataset_overrides": {"fmnist": {}}}, r"`\[dataset_overrides.fmnist\]` names no entry of `datasets`"),
    ({"dataset_overrides": {"mnist": {"data": {"dataset": "fmnist"}}}}, r"`dataset_overrides.mnist.data.dataset`"),
])
def test_compare_file_errors_are_one_clear_line(changes, match):
    with pytest.raises(ConfigError, match=match) as info:
        suite_from_dict(valid(**changes))
    assert "\n" not in str(info.value)


def test_cli_prefixes_every_progress_line_with_the_run(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(toml_text(["fedavg"], [3]))
    assert main(["compare", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "tiny: 1 methods x 1 datasets x 1 seeds = 1 runs" in err[0]
    assert "[1/1] mnist fedavg seed 3: round 1/1: 2 clients" in err
    assert any(line.startswith("[1/1] mnist fedavg seed 3: round 1/1, client 1 (2 of 2): test acc before local "
                               "training") for line in err)
    assert any(line.startswith("[1/1] mnist fedavg seed 3: round 1/1 done in") for line in err)
    assert any(line.startswith("[1/1] mnist fedavg seed 3: final mean client test acc") and line.endswith(
        "; 1 of 1 runs done") for line in err)


def test_load_compare_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="Compare file not found"):
        load_suite(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("methods = [")
    with pytest.raises(ConfigError, match="Malformed TOML in"):
        load_suite(tmp_path / "bad.toml")
    (tmp_path / "c.toml").write_text('methods = ["x"]\ndatasets = ["mnist"]\nseeds = [0]\n')
    with pytest.raises(ConfigError, match=r"c\.toml: Unknown method 'x'"):
        load_suite(tmp_path / "c.toml")
    assert main(["compare", "--config", str(tmp_path / "c.toml")]) == 2


def test_runs_share_data_settings_and_overrides_apply_per_method():
    spec = suite_from_dict(valid(
        methods=["rvepfl", "fedavg", "fedrep"], datasets=["mnist", "fmnist"],
        dataset_overrides={"fmnist": {"data": {"test_fraction": 0.2}}},
        overrides={"fedavg": {"train": {"batch_size": 64}}, "fedrep": {"personal": {"head_epochs": 3}}}))
    assert [r.label for r in spec.runs[:3]] == ["mnist-rvepfl-seed0", "mnist-fedavg-seed0", "mnist-fedrep-seed0"]
    assert len(spec.runs) == 3 * 2 * 2 and [r.index for r in spec.runs] == list(range(1, 13))
    for r in spec.runs:
        assert (r.cfg.method, r.cfg.seed, r.cfg.data.dataset, r.cfg.name) == (r.method, r.seed, r.dataset, r.label)
        expected = {"dataset": r.dataset, "test_fraction": 0.2 if r.dataset == "fmnist" else 0.1}
        assert r.cfg.data == replace(spec.runs[0].cfg.data, **expected)  # data settings equal across methods
        assert r.cfg.train.batch_size == (64 if r.method == "fedavg" else 32)
        assert r.cfg.personal.head_epochs == (3 if r.method == "fedrep" else 1)
    assert spec.method_overrides == {"fedavg": {"train.batch_size": 64}, "fedrep": {"personal.head_epochs": 3}}


def test_smoke_shrinks_every_run_and_has_its_own_directory():
    values = valid(base={"data": {"num_clients": 50}, "train": {"rounds": 100, "local_epochs": 10}},
                   overrides={"fedavg": {"train": {"batch_size": 64}}})
    spec = suite_from_dict(values, smoke=True)
    for r in spec.runs:
        assert (r.cfg.data.subset, r.cfg.data.num_clients) == (200, 2)
        assert (r.cfg.train.rounds, r.cfg.train.local_epochs, r.cfg.train.batch_size) == (2, 1, 32)
    assert default_out(spec) == Path("runs") / "t-smoke"
    assert default_out(suite_from_dict(values)) == Path("runs") / "t"


def test_markdown_margin_and_single_seed_cells():
    spec = Suite("paper", ("rvepfl", "nbafl"), ("mnist", "fmnist"), (0, 1), (),
                 setups={"mnist": Config(), "fmnist": apply_overrides(Config(), {"data.dataset": "fmnist"})})
    cells = [AccuracyCell("mnist", "rvepfl", (0, 1), Estimate((0.90, 0.92))),
             AccuracyCell("mnist", "nbafl", (0, 1), Estimate((0.88, 0.89))),
             AccuracyCell("fmnist", "rvepfl", (0, 1), Estimate((0.80, 0.80))),
             AccuracyCell("fmnist", "nbafl", (0, 1), Estimate((0.83, 0.83)))]
    text = accuracy_markdown(spec, cells)
    assert "| rvepfl | 91.0 ± 1.4 | 80.0 ± 0.0 |" in text
    assert "| nbafl | 88.5 ± 0.7 | 83.0 ± 0.0 |" in text
    assert "mnist: RVE-PFL margin over NbAFL: +2.5 points" in text
    assert "fmnist: RVE-PFL margin over NbAFL: -3.0 points" in text
    one = Suite("one", ("fedavg",), ("mnist",), (4,), (), setups={"mnist": Config()})
    text = accuracy_markdown(one, [AccuracyCell("mnist", "fedavg", (4,), Estimate((0.5,)))])
    assert "| fedavg | 50.0 |" in text and "margin" not in text and "one seed" in text
