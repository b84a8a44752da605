"""Every row of the "Bad input" table (docs/bad-input.md), run exactly as written.

The table is read from docs/bad-input.md, so the documentation and this test cannot drift apart. Each
row's command runs in a fresh directory that holds the files the row names (built below, as the
row's first column describes them); the test checks the exit code, that stderr is exactly the
row's one line (``error: ...``, no traceback) and that nothing was written: every file and
directory under the test's directory, the run directories the commands read included, is
byte-for-byte what it was before.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rvepfl.cli import main
from tests.helpers.cifar_format import images_to_rows, write_cifar_batch
from tests.helpers.idx_format import write_mnist_dir
from tests.unit.test_security import CreatesFile, snapshot

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "bad-input.md"


@dataclass(frozen=True)
class Row:
    what: str
    argv: list[str]
    message: str
    exit_code: int


def _cell(text: str) -> str:
    """A table cell's text: outer code-span backticks (single or double) removed, ``\\|`` unescaped."""
    text = text.strip().replace("\\|", "|")
    for fence in ("``", "`"):
        if len(text) > 2 * len(fence) and text.startswith(fence) and text.endswith(fence):
            return text[len(fence):-len(fence)].strip(" ") if fence == "``" else text[1:-1]
    return text


def read_table(text: str) -> list[Row]:
    """The rows of the page's table: bad input, command, message, exit code."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|- :"):
            continue
        cells = [_cell(c) for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        if cells[0] == "bad input":
            continue
        what, command, message, code = cells
        argv = shlex.split(command)
        assert argv[0] == "rvepfl", command
        rows.append(Row(what, argv[1:], message, int(code)))
    return rows


ROWS = read_table(TABLE.read_text(encoding="utf-8"))


def test_the_table_covers_the_bad_inputs_it_should() -> None:
    assert len(ROWS) >= 15
    commands = " ".join(" ".join(r.argv) for r in ROWS)
    for needle in ("bad.toml", "typo.toml", "nbafl.epsilon=0", "--clients", "missing", "locked",
                   "truncated", "wrong-magic", "cifar", "corrupt-run", "foreign-run", "edited-run", "pickled-run",
                   "--round", "--method", "--dataset", "attack xyz", "name=../", "--evaluator-images",
                   "show infinite-run", "show malformed-run", "--tensorboard", "attack mia --run full-run",
                   "attack gmi --run full-run", "damaged-prior-run", "--restarts 0", "--param", "--client all",
                   "some-clients.toml"):
        assert needle in commands, needle
    assert all(r.message.startswith("error: ") and "\n" not in r.message for r in ROWS)


# --------------------------------------------------------------------------------------------
# the files the rows name
# --------------------------------------------------------------------------------------------

TRAIN = ["--method", "fedper", "--subset", "100", "--clients", "2", "--rounds", "2", "--local-epochs", "1",
         "--batch-size", "32", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished FedPer run (2 clients, 2 rounds; client states saved at round 2 only)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *TRAIN, "--out", str(out)]) == 0
    return out


def _text(text: str) -> Callable[[Path, Path], None]:
    return lambda path, trained: path.write_text(text, encoding="utf-8")


def _idx(damage: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    """The four MNIST IDX files (60 training and 20 test images), ``train-images`` damaged."""

    def build(directory: Path, trained: Path) -> None:
        write_mnist_dir(directory)
        path = directory / "train-images-idx3-ubyte"
        path.write_bytes(damage(path.read_bytes()))

    return build


def _cifar(directory: Path, trained: Path) -> None:
    """Six one-image CIFAR-10 batches; ``data_batch_1`` cut off after 200 bytes."""
    directory.mkdir()
    images = np.zeros((1, 32, 32, 3), np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(directory / name, images_to_rows(images), [0])
    path = directory / "data_batch_1"
    path.write_bytes(path.read_bytes()[:200])


def _run(change: Callable[[Path], None] | None = None) -> Callable[[Path, Path], None]:
    """A copy of the trained run, with ``change`` applied."""

    def build(directory: Path, trained: Path) -> None:
        shutil.copytree(trained, directory)
        if change is not None:
            change(directory)

    return build


def _truncate_global(run: Path) -> None:
    path = run / "checkpoints" / "round_0002" / "global.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def _client_state_as_global(run: Path) -> None:
    ckpt = run / "checkpoints" / "round_0002"
    shutil.copyfile(ckpt / "clients" / "0000.safetensors", ckpt / "global.safetensors")


def _pickle_as_global(run: Path) -> None:
    path = run / "checkpoints" / "round_0002" / "global.safetensors"
    path.write_bytes(pickle.dumps({"classifier.weight": CreatesFile(run.parent / "pwned")}, protocol=4))


def _full_run(directory: Path, trained: Path) -> None:
    """A finished FedAvg run that used every image of its data set (80 random IDX digits), so
    that no image is left out for a membership attack."""
    data = write_mnist_dir(directory.parent / "full-run-data")
    assert main(["train", "--method", "fedavg", "--data-dir", str(data), "--clients", "2", "--rounds", "1",
                 "--local-epochs", "1", "--batch-size", "32", "--threads", "1", "--workers", "1", "--quiet",
                 "--out", str(directory)]) == 0


def _damaged_prior(run: Path) -> None:
    """64 zero bytes where `rvepfl attack gmi --threat-model stolen` caches its prior."""
    from rvepfl.attacks.gmi import Gmi, prior_path, prior_source
    from rvepfl.attacks.runner import AttackRequest
    from rvepfl.attacks.threat import Target

    target = Target(run)
    settings = Gmi().resolve(target, AttackRequest(threat="stolen"))
    path = prior_path(target, settings, prior_source(target, settings)[0], run / "attacks")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"\x00" * 64)


def _edit_seed(run: Path) -> None:
    path = run / "config.toml"
    path.write_text(path.read_text().replace("seed = 0", "seed = 5"))


def _infinite_progress(run: Path) -> None:
    path = run / "state" / "progress.json"
    path.write_text(re.sub(r'"completed_round": \d+', '"completed_round": Infinity', path.read_text()))


def _tensorboard_file(run: Path) -> None:
    (run / "tensorboard").write_text("not a directory\n")


def _short_metrics_row(run: Path) -> None:
    path = run / "metrics" / "epoch_testing.csv"
    lines = path.read_text().splitlines()
    lines[2] = "2,0.5,0.1"
    path.write_text("\n".join(lines) + "\n")


FRONTIER = """name = "f"
methods = ["fedavg", "nbafl"]
datasets = ["mnist"]
seeds = [0]
[audit]
attacks = ["miface"]
[sweep.nbafl]
key = "%s"
values = %s
"""
"""A frontier file sweeping NbAFL: the key and the values are the rows' bad input."""

AUDIT = """methods = ["fedavg"]
datasets = ["mnist"]
seeds = [0]
[audit]
attacks = ["miface"]
stolen_clients = %s
"""
"""An audit file whose ``stolen_clients`` is the rows' bad input."""


SETUPS: dict[str, Callable[[Path, Path], None]] = {
    "bad.toml": _text("[train\nrounds = 3\n"),
    "typo.toml": _text("[train]\nlcoal_epochs = 3\n"),
    "nul-name.toml": _text('name = "quick\\u0000"\n'),
    "escape.toml": _text('name = "../escape"\nmethods = ["fedavg"]\ndatasets = ["mnist"]\nseeds = [0]\n'),
    "sweep-typo.toml": _text(FRONTIER % ("nbafl.epsilom", "[1.0, 10.0]")),
    "empty-grid.toml": _text(FRONTIER % ("nbafl.epsilon", "[]")),
    "eps-zero.toml": _text(FRONTIER % ("nbafl.epsilon", "[0.0, 10.0]")),
    "some-clients.toml": _text(AUDIT % '"some"'),
    "far-clients.toml": _text(AUDIT % "[0, 12]"),
    "locked": lambda path, trained: path.mkdir(mode=0),
    "truncated": _idx(lambda data: data[:-40]),
    "wrong-magic": _idx(lambda data: b"\x89PNG" + data[4:]),
    "cifar": _cifar,
    "finished-run": _run(),
    "full-run": _full_run,
    "corrupt-run": _run(_truncate_global),
    "pickled-run": _run(_pickle_as_global),
    "foreign-run": _run(_client_state_as_global),
    "edited-run": _run(_edit_seed),
    "damaged-prior-run": _run(_damaged_prior),
    "infinite-run": _run(_infinite_progress),
    "malformed-run": _run(_short_metrics_row),
    "tb-file-run": _run(_tensorboard_file),
}

RAY_AUDIT = """name = "a"
methods = ["fedavg"]
datasets = ["mnist"]
seeds = [0]
[audit]
attacks = ["miface"]
"""
"""An audit file with nothing wrong in it: the `--ray-address` rows' bad input is the address."""

SETUPS.update({  # the `--ray-address` rows: good files; no cluster there, or Ray missing (no-ray.toml)
    "ray.toml": _text(FRONTIER % ("nbafl.epsilon", "[1.0, 10.0]")),
    "no-ray.toml": _text(FRONTIER % ("nbafl.epsilon", "[1.0, 10.0]")),
    "ray-audit.toml": _text(RAY_AUDIT),
})


@pytest.fixture(autouse=True)
def _without_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The row that names no-ray.toml runs as if Ray (the `ray` extra) were not installed."""
    callspec = getattr(request.node, "callspec", None)
    row = callspec.params.get("row") if callspec is not None else None
    if isinstance(row, Row) and "no-ray.toml" in row.argv:
        monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError


# --------------------------------------------------------------------------------------------
# running a row
# --------------------------------------------------------------------------------------------


def _drop_root_override() -> None:
    """In the child before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set, so that root, too, is refused a directory of mode 000."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _went_on(*args: object, **kwargs: object) -> None:
    raise AssertionError("the command accepted the bad input and went on to train or attack")


def run_row(row: Row, cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the row's command, run in ``cwd``."""
    if "locked" in row.argv and os.geteuid() == 0:  # root reads any directory: drop that power
        try:
            done = subprocess.run([sys.executable, "-m", "rvepfl", *row.argv], cwd=cwd, capture_output=True,
                                  text=True, timeout=120, preexec_fn=_drop_root_override)
        except subprocess.SubprocessError as exc:
            pytest.skip(f"cannot drop root's file-permission override here: {exc}")
        return done.returncode, done.stdout, done.stderr
    capsys.readouterr()
    code = main(row.argv)  # training and attacking are stubbed out (see test_bad_input_row)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("row", ROWS, ids=[" ".join(r.argv) for r in ROWS])
def test_bad_input_row(row: Row, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    cwd = tmp_path / "a" / "b" / "work"  # deep enough that ../../x still lands under tmp_path
    cwd.mkdir(parents=True)
    for name, build in SETUPS.items():
        if name in row.argv:
            build(cwd / name, trained)
    monkeypatch.chdir(cwd)
    for module, name in (("rvepfl.fl.simulation", "train"), ("rvepfl.attacks.runner", "run_attack"),
                         ("rvepfl.experiments.runner", "run_suite")):
        monkeypatch.setattr(f"{module}.{name}", _went_on)  # fail fast instead of training for minutes
    before = snapshot(tmp_path)
    try:
        code, out, err = run_row(row, cwd, capsys)
        after = snapshot(tmp_path)
    finally:
        if (cwd / "locked").exists():
            (cwd / "locked").chmod(0o700)  # so that pytest can remove it
    assert "Traceback" not in out + err, err
    assert err.splitlines() == [row.message], err
    assert code == row.exit_code
    assert out == ""
    assert after == before


def test_a_data_dir_whose_name_is_too_long_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # Not a row of the table: the command would hold a 300-character name.
    monkeypatch.chdir(tmp_path)
    name = "a" * 300
    code = main(["train", "--data-dir", name, "--out", "run"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.splitlines() == [
        f"error: {name}: cannot use this path as the data directory (File name too long); check --data-dir"]
    assert list(tmp_path.iterdir()) == []
