"""`rvepfl audit` on a tiny audit file: every run trained, every attack run or marked n/a."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rvepfl.cli import main
from rvepfl.errors import ConfigError
from rvepfl.experiments.spec import suite_from_dict
from tests.helpers.suites import finished_suite, toml_text
from tests.helpers.threads import attack_thread_counts

pytestmark = pytest.mark.slow  # the slow tier: `python -m pytest -m "not slow"` leaves it out

TINY = """
name = "tiny-audit"
methods = ["rvepfl", "fedavg", "fedper"]
datasets = ["mnist"]
seeds = [0]

[base]
threads = 1
workers = 1
[base.data]
subset = 300
num_clients = 2
[base.train]
rounds = 1
local_epochs = 1
batch_size = 32

[audit]
attacks = ["idlg", "miface"]
miface_threats = ["released", "stolen"]
update_attacks = ["idlg"]
images = 1
evaluator_images = 500
[audit.iterations]
idlg = 2
idlg-update = 4
miface = 3
[audit.restarts]
idlg-update = 2
"""

JOBS = (("idlg", "gradient"), ("idlg", "update"), ("miface", "released"), ("miface", "stolen"))


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> Path:
    return finished_suite(tmp_path_factory.mktemp("audit"), "audit", TINY)


def test_audit_writes_every_cell_and_marks_missing_surfaces(audited):
    with open(audited / "audit.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["method"], r["attack"], r["threat"]) for r in rows} == {
        (m, a, t) for m in ("rvepfl", "fedavg", "fedper") for a, t in JOBS}
    by = {(r["method"], r["attack"], r["threat"]): r for r in rows}
    for threat in ("gradient", "update"):
        assert by[("fedper", "idlg", threat)]["images"] == "0" and by[("fedper", "idlg", threat)]["note"]
        assert by[("fedavg", "idlg", threat)]["images"] == "1"
    # Each job ran with its own settings: the attack-threat key wins over the attack's.
    attacks = audited / "runs" / "mnist-fedavg-seed0" / "attacks"
    update = json.loads((attacks / "idlg-update" / "summary.json").read_text())["settings"]
    assert update.items() >= {"threat": "update", "iterations": 4, "restarts": 2, "local_steps": 1,
                              "evaluator_images": 500}.items()
    gradient = json.loads((attacks / "idlg-gradient" / "summary.json").read_text())["settings"]
    assert (gradient["iterations"], gradient["restarts"], gradient["local_steps"]) == (2, 1, 0)
    assert by[("fedper", "miface", "stolen")]["images"] == "10"
    assert by[("fedavg", "idlg", "gradient")]["images"] == "1" and by[("fedavg", "idlg", "gradient")]["psnr"]
    md = (audited / "audit.md").read_text()
    assert "| rvepfl |" in md and "| fedper |" in md and "n/a" in md
    assert "| idlg PSNR (dB) |" in md and "| idlg (update) PSNR (dB) |" in md and "(update): " in md
    assert (audited / "privacy_utility_mnist.png").read_bytes()[:4] == b"\x89PNG"
    # One evaluator for the three runs: they share seed, data set and so their held-out images.
    assert len(list((audited / "evaluators").glob("*.safetensors"))) == 1


def test_a_corrupt_checkpoint_stops_the_audit(tmp_path, capsys):
    """Only a method without an attack surface makes an n/a cell: a damaged checkpoint is an error."""
    text = toml_text(["fedavg"], [0], name="corrupt") + '[audit]\nattacks = ["miface"]\nmiface_threats = ["released"]\n'
    out = finished_suite(tmp_path, "compare", text)  # the run only: compare ignores [audit]
    checkpoint = out / "runs" / "mnist-fedavg-seed0" / "checkpoints" / "round_0001" / "global.safetensors"
    checkpoint.write_bytes(b"not a safetensors file")
    capsys.readouterr()
    assert main(["audit", "--config", str(tmp_path / "suite.toml"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no attack surface" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and str(checkpoint) in last, err
    assert not (out / "audit.csv").exists() and not (out / "runs" / "mnist-fedavg-seed0" / "attacks").exists()


def test_audit_rerun_skips_everything(audited, capsys):
    config = audited.parent / "suite.toml"  # written by finished_suite
    before = (audited / "audit.csv").read_text()
    assert main(["audit", "--config", str(config), "--out", str(audited)]) == 0
    err = capsys.readouterr().err
    assert "training ->" not in err and "complete with these settings, skipped" in err
    assert (audited / "audit.csv").read_text() == before


@pytest.mark.parametrize(
    ("audit", "match"),
    [
        ({"attacks": ["nope"]}, "Unknown name 'nope' in `audit.attacks`"),
        ({"bogus": 1}, "Unknown audit key `audit.bogus`"),
        ({"images": 3, "batch_size": 2, "attacks": ["dlg"]}, "multiple of `audit.batch_size`"),
        ({"batch_size": 2, "images": 2}, "iDLG reads the label of a single image"),
        ({"client": 9}, "Expected `audit.client` < 2"),
        ({"iterations": {"ig": 0}}, "audit.iterations.ig"),
        ({"iterations": {"ig-released": 5}}, "`audit.iterations.ig-released` to name one of"),
        ({"restarts": {"mia": 2}}, "`audit.restarts.mia` to name one of dlg, dlg-gradient, dlg-update, idlg"),
        ({"restarts": {"dlg": 0}}, r"`audit.restarts.dlg` .* integer >= 1, got 0"),
        ({"update_attacks": ["miface"]}, "Unknown name 'miface' in `audit.update_attacks`: choose from dlg, idlg, ig"),
        ({"attacks": ["dlg"], "update_attacks": ["ig"]},
         r"`audit.update_attacks` to name attacks that `audit.attacks` runs \(dlg\), got 'ig'"),
        ({"local_steps": 0}, "Expected `audit.local_steps` to be an integer >= 1, got 0"),
        ({"workers": 0}, "Expected `audit.workers` to be an integer >= 1, got 0"),
    ],
)
def test_bad_audit_files_are_refused(audit, match):
    import tomllib

    values = tomllib.loads(TINY)
    values["audit"] = audit
    with pytest.raises(ConfigError, match=match):
        suite_from_dict(values, audit=True)


def test_missing_audit_table_is_refused():
    import tomllib

    values = tomllib.loads(TINY)
    del values["audit"]
    with pytest.raises(ConfigError, match=r"Expected an \[audit\] table"):
        suite_from_dict(values, audit=True)


@pytest.mark.parametrize(("threads", "expected"), [(0, 1), (2, 2)])
def test_audit_attacks_run_single_threaded_unless_the_config_asks(audited, monkeypatch, threads, expected):
    """The run config's 0 (torch's default for training) gives its attacks one thread; the
    process's count comes back after each attack (the attacks are complete: each is skipped)."""
    import dataclasses
    import tomllib

    import torch

    from rvepfl.experiments import runner

    suite = suite_from_dict(tomllib.loads(TINY), audit=True)
    r = next(r for r in suite.runs if r.method == "fedavg")
    r = dataclasses.replace(r, cfg=dataclasses.replace(r.cfg, threads=threads))
    with attack_thread_counts(monkeypatch, runner, start=3) as seen:  # 3: not what either case gives
        jobs = list(runner.attack_run(r, suite.audit, audited, 0.5, lambda line: None, None))
        assert torch.get_num_threads() == 3
    assert len(jobs) == len(JOBS) and seen == [expected] * len(JOBS)


def _without_seconds(path: Path) -> list[dict[str, str]]:
    """A scores.csv's rows as written, less the column that times each image."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and "seconds" in rows[0]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_attacks_in_worker_processes_give_the_same_scores(audited, tmp_path):
    """`audit.workers = 2`: each run's jobs side by side in two processes, which share the
    evaluator they build under a lock; every score is the in-process attack's, to the last digit,
    and what each job logs is said while the jobs run, before the job is yielded."""
    import shutil
    import tomllib

    from rvepfl.experiments import runner
    from rvepfl.experiments.attack_pool import AttackPool

    values = tomllib.loads(TINY)
    values["audit"]["workers"] = 2
    suite = suite_from_dict(values, audit=True)
    assert suite.audit.workers == 2
    out = tmp_path / "out"
    compared = 0
    with AttackPool(suite.audit.workers) as pool:
        for r in [r for r in suite.runs if r.method == "fedavg"]:  # every job has a surface on FedAvg
            shutil.copytree(audited / "runs" / r.label, out / "runs" / r.label,
                            ignore=shutil.ignore_patterns("attacks"))
            said: list[str] = []
            jobs, said_by_then = [], []
            for job in runner.attack_run(r, suite.audit, out, 0.5, said.append, None, pool):
                jobs.append(job)
                said_by_then.append(list(said))
            assert [(j.attack, j.threat) for j, *_ in jobs] == list(JOBS)  # the plan's order, whoever ends first
            for (job, _row, table, timed), before in zip(jobs, said_by_then):
                if table is None:
                    continue
                assert timed
                prefix = f"[{r.label}] {job.attack} ({job.threat}): "
                assert [line for line in before if line.startswith(prefix)], before
                theirs = _without_seconds(audited / "runs" / r.label / "attacks" / job.key / "scores.csv")
                assert _without_seconds(out / "runs" / r.label / "attacks" / job.key / "scores.csv") == theirs
                compared += 1
    assert compared == len(JOBS)
    built = sorted(p.name for p in (out / "evaluators").iterdir())  # the one evaluator, and no lock file left
    assert built == sorted(p.name for p in (audited / "evaluators").iterdir()) and len(built) == 1
