"""`rvepfl frontier`: the frontier file (sweeps over identical clients), its refusals, a smoke
run end to end and a frontier stopped part-way that continues without redoing anything."""

from __future__ import annotations

import csv
import json
import tomllib

import pytest

from rvepfl.cli import main
from rvepfl.errors import ConfigError
from rvepfl.experiments import frontier as frontier_module
from rvepfl.experiments.frontier import disk_use, frontier_from_dict, prune_run
from rvepfl.rundir import RunDir
from tests.helpers.suites import frontier_text

BASE = frontier_text([0, 1])


def _values(text: str = BASE, **tables: str) -> dict:
    extra = "\n".join(tables.values())
    return tomllib.loads(text + "\n" + extra)


def test_a_sweep_is_a_run_per_point_and_seed_on_the_same_clients():
    plan = frontier_from_dict(_values())
    labels = [r.label for r in plan.suite.runs]
    assert labels == ["mnist-fedavg-seed0", "mnist-nbafl-epsilon1-seed0", "mnist-nbafl-epsilon100-seed0",
                      "mnist-fedavg-seed1", "mnist-nbafl-epsilon1-seed1", "mnist-nbafl-epsilon100-seed1"]
    eps = {r.label: r.cfg.nbafl.epsilon for r in plan.suite.runs if r.method == "nbafl"}
    assert eps["mnist-nbafl-epsilon1-seed0"] == 1.0 and eps["mnist-nbafl-epsilon100-seed1"] == 100.0
    for seed in (0, 1):
        data = {r.cfg.data for r in plan.suite.runs if r.seed == seed}
        assert len(data) == 1  # every point of every method: the same data settings, so the same clients
    assert [r.index for r in plan.suite.runs] == list(range(1, 7))
    assert plan.reference == "nbafl" and plan.against == ()  # no rvepfl here: the first swept method


@pytest.mark.parametrize("sweep, match", [
    ('[sweep.nbafl]\nkey = "nbafl.epsilom"\nvalues = [1.0]',
     r"`sweep.nbafl`: Unknown config key `nbafl.epsilom`: did you mean `epsilon`\?"),
    ('[sweep.nbafl]\nkey = "nbafl.epsilon"\nvalues = []',
     r"Expected `sweep.nbafl.values` to be a non-empty list of numbers, got \[\]"),
    ('[sweep.nbafl]\nkey = "nbafl.epsilon"\nvalues = [0.0]', r"`sweep.nbafl`: Expected `nbafl.epsilon` > 0, got 0.0"),
    ('[sweep.nbafl]\nkey = "nbafl.epsilon"\nvalues = [1.0, 1.0]', "without repeats"),
    ('[sweep.nbafl]\nkey = "data.subset"\nvalues = [100]',
     "cannot be swept: every point must train on the same clients"),
    ('[sweep.fedavg]\nkey = "nbafl.epsilon"\nvalues = [1.0, 2.0]', "does not change fedavg's runs"),
    ('[sweep.ditto]\nkey = "ditto.lam"\nvalues = [1.0]', r"`\[sweep.ditto\]` names no entry of `methods`"),
    ('[sweep.nbafl]\nkey = "nbafl.epsilon"\nvalue = [1.0]', r"Unknown key `sweep.nbafl.value`"),
    ('[frontier]\nreference = "fedper"', "Expected `frontier.reference` to name an entry of `methods`"),
    ('[frontier]\nagainst = ["fedavg"]', "Expected `frontier.against` to name swept methods"),
    ('[frontier]\nruns_at_once = 0', r"Expected `frontier.runs_at_once` to be an integer >= 1"),
    ('[frontier]\nruns_at_once = true', r"Expected `frontier.runs_at_once` to be an integer >= 1"),
])
def test_bad_frontier_files_are_one_clear_line(sweep, match):
    text = BASE.split("[sweep.nbafl]")[0] if sweep.startswith("[sweep.") else BASE
    with pytest.raises(ConfigError, match=match):
        frontier_from_dict(_values(text, extra=sweep))


def test_a_frontier_without_a_sweep_is_refused():
    with pytest.raises(ConfigError, match=r"at least one \[sweep.<method>\]"):
        frontier_from_dict(_values(BASE.split("[sweep.nbafl]")[0]))


def test_pruning_keeps_the_victims_states_only(tmp_path):
    run = RunDir(tmp_path / "run")
    for folder in (run.path / "state" / "clients", run.path / "checkpoints" / "round_0002" / "clients"):
        folder.mkdir(parents=True)
    for c in range(3):
        (run.path / "state" / "clients" / f"{c:04d}-r0002.safetensors").write_bytes(b"x" * 5000)
        (run.path / "checkpoints" / "round_0002" / "clients" / f"{c:04d}.safetensors").write_bytes(b"y" * 5000)
    (run.path / "checkpoints" / "round_0002" / "global.safetensors").write_bytes(b"g")
    before = disk_use(run.path)
    assert prune_run(run, (1,)) == 4
    assert prune_run(run, (1,)) == 0  # idempotent
    left = sorted(p.relative_to(run.path).as_posix() for p in run.path.rglob("*.safetensors"))
    assert left == ["checkpoints/round_0002/clients/0001.safetensors", "checkpoints/round_0002/global.safetensors",
                    "state/clients/0001-r0002.safetensors"]
    assert disk_use(run.path) < before


def test_pruning_keeps_every_client_a_stolen_job_attacks(tmp_path):
    run = RunDir(tmp_path / "run")
    for folder in (run.path / "state" / "clients", run.path / "checkpoints" / "round_0002" / "clients"):
        folder.mkdir(parents=True)
    for c in range(12):  # 0010 and 0011: a client index is four digits, not a prefix
        (run.path / "state" / "clients" / f"{c:04d}-r0002.safetensors").write_bytes(b"x")
        (run.path / "checkpoints" / "round_0002" / "clients" / f"{c:04d}.safetensors").write_bytes(b"y")
    twelve = BASE.replace("num_clients = 2", "num_clients = 12")
    plan = frontier_from_dict(_values(twelve.replace('attacks = ["miface"]',
                                                     'attacks = ["miface"]\nstolen_clients = [1, 11]'))).suite.audit
    keep = plan.kept_clients(12)
    assert keep == (0, 1, 11)
    assert prune_run(run, keep) == 2 * 9
    left = sorted(p.name for p in run.path.rglob("*.safetensors"))
    assert left == ["0000-r0002.safetensors", "0000.safetensors", "0001-r0002.safetensors", "0001.safetensors",
                    "0011-r0002.safetensors", "0011.safetensors"]
    released = frontier_from_dict(_values(BASE.replace(
        'miface_threats = ["released", "stolen"]', 'miface_threats = ["released"]\nstolen_clients = "all"')))
    assert released.suite.audit.kept_clients(12) == (0,)  # no job attacks a stolen model


@pytest.mark.slow
def test_frontier_smoke_end_to_end_and_a_stopped_frontier_continues(tmp_path, monkeypatch, capsys):
    config = tmp_path / "frontier.toml"  # one seed (the interval tests cover several), membership inference too
    config.write_text(BASE.replace("seeds = [0, 1]", "seeds = [0]").replace(  # the attacks in 2 processes
        'attacks = ["miface"]', 'attacks = ["miface", "mia"]\nmia_threats = ["stolen"]\nreferences = 2\nworkers = 2'))
    out = tmp_path / "out"
    calls = []
    real_prune = frontier_module.prune_run

    def stop_after_two(run, keep_clients):  # Ctrl-C after the second run's attacks, before its pruning
        calls.append(run.path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_prune(run, keep_clients)

    monkeypatch.setattr(frontier_module, "prune_run", stop_after_two)
    pools: list[int] = []
    real_pool = frontier_module.attack_pool
    monkeypatch.setattr(frontier_module, "attack_pool", lambda n: (pools.append(n), real_pool(n))[1])
    assert main(["frontier", "--config", str(config), "--out", str(out), "--quiet"]) == 130
    first = out / "runs" / "mnist-fedavg-seed0" / "attacks" / "miface-stolen" / "summary.json"
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(frontier_module, "prune_run", real_prune)
    capsys.readouterr()
    assert main(["frontier", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert first.stat().st_mtime_ns == stamp  # a finished attack is not redone
    assert pools == [2, 2]  # both invocations ran the attacks in two processes
    assert "[1/3] mnist fedavg seed 0: training" not in err
    assert "[2/3] mnist nbafl epsilon=1 seed 0: training" not in err
    assert "[3/3] mnist nbafl epsilon=100 seed 0: training" in err
    for name in ("frontier.csv", "frontier_verdict.csv", "frontier.md", "frontier_mnist.png", "frontier.json",
                 "frontier.toml", "frontier_rounds.csv", "frontier_rounds_mnist.png"):
        assert (out / name).is_file(), name
    with open(out / "frontier_rounds.csv", newline="") as fh:  # every point's every round, from its run
        curve = [r for r in csv.DictReader(fh) if r["method"] == "fedavg"]
    run_curve = (out / "runs" / "mnist-fedavg-seed0" / "metrics" / "epoch_testing.csv").read_text().splitlines()[1:]
    assert [float(r["accuracy_mean"]) for r in curve] == pytest.approx([100 * float(line.split(",")[2])
                                                                          for line in run_curve])
    assert "## Training curves" in (out / "frontier.md").read_text()
    record = json.loads((out / "frontier.json").read_text())
    assert record["peak_disk_bytes"] > 0 and len(record["attacked"]) == 3
    assert main(["frontier", "--config", str(config), "--out", str(out), "--quiet"]) == 0  # all complete
    again = json.loads((out / "frontier.json").read_text())  # the report again: no time added
    assert (again["seconds"], again["attacked"]) == (record["seconds"], record["attacked"])
    with open(out / "frontier.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["value"]) for r in rows] == [("fedavg", ""), ("nbafl", "1.0"), ("nbafl", "100.0")]
    for r in rows:  # every cell a mean inside its interval; the AUC a probability
        assert float(r["accuracy_low"]) <= float(r["accuracy_mean"]) <= float(r["accuracy_high"])
        assert 0.0 <= float(r["mia-stolen_low"]) <= float(r["mia-stolen_mean"]) <= float(r["mia-stolen_high"]) <= 1.0


def test_a_stolen_jobs_clients_are_groups_of_the_exact_bound(tmp_path):
    from rvepfl.experiments.frontier import _job_sample
    from rvepfl.experiments.spec import AttackJob

    rows = ["client,image,label,evaluator_label,evaluator_correct"]
    rows += [f"{c},{k},{k},{k},1" for c in range(3) for k in range(10)]
    path = tmp_path / "scores.csv"
    path.write_text("\n".join(rows) + "\n")
    sample = _job_sample(AttackJob("miface", "stolen"), path)
    assert sample.clusters == 3 and sample.counts() == (10.0, 10.0)
    released = tmp_path / "released.csv"
    released.write_text("image,label,evaluator_label,evaluator_correct\n"
                        + "".join(f"{k},{k},{k},1\n" for k in range(10)))
    assert _job_sample(AttackJob("miface", "released"), released).clusters == 1


@pytest.mark.slow
def test_runs_side_by_side_give_the_same_frontier_byte_for_byte(tmp_path, capsys):
    config = tmp_path / "frontier.toml"  # the stolen job: FedAvg's clients share one model, inverted once
    config.write_text(BASE.replace("seeds = [0, 1]", "seeds = [0]"))
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["frontier", "--config", str(config), "--out", str(one), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["frontier", "--config", str(config), "--out", str(two), "--quiet", "--runs-at-once", "2"]) == 0
    err = capsys.readouterr().err
    assert "3 runs, 2 at a time, each in its own process" in err
    for name in ("frontier.csv", "frontier_verdict.csv", "frontier_rounds.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    record = json.loads((two / "frontier.json").read_text())
    assert record["seconds"] > 0 and len(record["attacked"]) == 3
    assert main(["frontier", "--config", str(config), "--out", str(two), "--quiet", "--runs-at-once", "2"]) == 0
    again = json.loads((two / "frontier.json").read_text())  # complete: nothing redone, no time added
    assert (again["seconds"], again["attacked"]) == (record["seconds"], record["attacked"])


def _die(task, out):  # a run's process killed mid-run
    import os

    os._exit(9)


def test_a_run_process_that_dies_is_one_line(tmp_path):
    from rvepfl.experiments.ray_fanout import RunTask
    from rvepfl.experiments.run_pool import RunWorkerDied, runs_side_by_side

    plan = frontier_from_dict(_values())
    tasks = [RunTask(r, None, f"[{r.index}/6] {r.title}") for r in plan.suite.runs[:2]]
    with pytest.raises(RunWorkerDied, match=r"a run's process died .* run the same command again to resume"):
        list(runs_side_by_side(_die, tasks, tmp_path, 2))
    with pytest.raises(ValueError, match="at least 2 processes"):
        list(runs_side_by_side(_die, tasks, tmp_path, 1))
