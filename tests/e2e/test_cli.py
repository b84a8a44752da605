"""End-to-end runs of the `rvepfl` command on tiny configurations."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rvepfl.rundir import CSV_HEADERS
from tests.helpers.idx_format import write_mnist_dir

pytestmark = pytest.mark.slow  # the slow tier: `python -m pytest -m "not slow"` leaves it out

TINY = ["--subset", "500", "--clients", "2", "--rounds", "3", "--local-epochs", "2",
        "--batch-size", "32", "--threads", "1", "--quiet"]


def rvepfl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rvepfl", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def read(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    result = rvepfl("train", *TINY, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_run_directory_has_the_six_csvs_with_their_columns(reference_run):
    for name, header in CSV_HEADERS.items():
        rows = read(reference_run / "metrics" / name)
        assert rows[0] == header
        if name == "client_failures.csv":
            assert len(rows) == 1, "no client failed, so the file has only its header"
            continue
        per_round = 2 if name.startswith(("client", "general_test_clients")) else 1
        assert len(rows) - 1 == 3 * per_round, name
    for r in range(4):
        assert (reference_run / f"checkpoints/round_{r:04d}/global.safetensors").is_file()
    assert sorted(p.name for p in (reference_run / "checkpoints/round_0003/clients").iterdir()) == [
        "0000.safetensors", "0001.safetensors"]
    summary = json.loads((reference_run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["seed"] == 0
    assert summary["parameters"]["private_per_client"] == 19_698_080
    partition = json.loads((reference_run / "partition.json").read_text())
    assert [c["train"] + c["test"] for c in partition["clients"]] == [250, 250]
    assert "[train]" in (reference_run / "config.toml").read_text()
    assert (reference_run / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the run's accuracy plot


def test_rvepfl_accuracy_rises_above_chance(reference_run):
    rows = read(reference_run / "metrics" / "epoch_testing.csv")
    final_acc = float(rows[-1][2])
    assert final_acc > 0.3, f"mean client test accuracy {final_acc} is near chance (0.1)"


def test_resume_of_a_finished_run_changes_nothing(reference_run):
    before = read(reference_run / "metrics" / "epoch_testing.csv")
    result = rvepfl("train", "--resume", str(reference_run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert read(reference_run / "metrics" / "epoch_testing.csv") == before


def test_fedavg_runs_on_the_same_clients(tmp_path):
    out = tmp_path / "fedavg"
    result = rvepfl("train", *TINY, "--method", "fedavg", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"accuracy plot: {out / 'accuracy.png'}" in result.stdout.splitlines()[-2]
    assert float(read(out / "metrics" / "epoch_testing.csv")[-1][2]) > 0.5


def _corrupt_idx_dir(tmp_path: Path) -> Path:
    d = write_mnist_dir(tmp_path / "corrupt")
    path = d / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x42  # unknown IDX data type code
    path.write_bytes(bytes(data))
    return d


# Every bad input has its row in docs/bad-input.md, run in-process by tests/e2e/test_bad_input.py;
# these two (a config error, a data error) go through the installed command in a process of its own.
@pytest.mark.parametrize(
    "case, message",
    [
        ("corrupt-idx", "train-images-idx3-ubyte"),
        ("unknown-key", "Unknown config key `train.lcoal_epochs`: did you mean `local_epochs`?"),
    ],
)
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path, case, message):
    if case == "corrupt-idx":
        args = ["--data-dir", str(_corrupt_idx_dir(tmp_path))]
    else:
        cfg = tmp_path / "bad.toml"
        cfg.write_text("[train]\nlcoal_epochs = 3\n")
        args = ["--config", str(cfg)]
    out = tmp_path / "run"
    result = rvepfl("train", *args, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_bf16_mixed_end_to_end_and_a_resume_that_would_change_precision(tmp_path, reference_run):
    assert json.loads((reference_run / "summary.json").read_text())["precision"]["requested"] == "auto"
    small = ["--subset", "60", "--clients", "2", "--rounds", "1", "--local-epochs", "1", "--batch-size", "32",
             "--threads", "1", "--workers", "1", "--method", "fedavg", "--quiet", "--set", "train.precision=bf16-mixed"]
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        result = rvepfl("train", *small, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert "precision bf16-mixed: bfloat16 mixed precision asked for" in result.stderr
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["precision"]["ran"] == "bf16-mixed"
    assert json.loads((runs[0] / "state" / "precision.json").read_text())["ran"] == "bf16-mixed"
    for name in set(CSV_HEADERS) - {"round_timing.csv"}:  # same config, seed and precision: the same numbers
        assert (runs[0] / "metrics" / name).read_bytes() == (runs[1] / "metrics" / name).read_bytes(), name
    # a run that trained in another precision (as "auto" may resolve on other hardware) is not continued
    record = runs[0] / "state" / "precision.json"
    record.write_text(json.dumps({"requested": "auto", "ran": "32", "reason": "elsewhere"}))
    before = {p: p.read_bytes() for p in runs[0].rglob("*") if p.is_file()}
    result = rvepfl("train", "--resume", str(runs[0]), "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {runs[0]} trained in precision 32, but train.precision = 'bf16-mixed' resolves to bf16-mixed here "
        f"({summary['precision']['reason']}): resume it where it resolves to 32"]
    assert {p: p.read_bytes() for p in runs[0].rglob("*") if p.is_file()} == before
