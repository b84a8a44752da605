"""Security: no code path deserialises with pickle or runs code from input, and no name from a
config can make a command write outside the directory it was given.

- A scan of the syntax tree of every .py file under src/ and benchmarks/ refuses pickle-family
  loaders (pickle, cPickle, dill, cloudpickle, joblib, shelve, marshal, pandas.read_pickle,
  yaml.load), ``torch.load`` without ``weights_only=True``, ``numpy.load`` without an explicit
  ``allow_pickle=False``, and ``eval``/``exec``. The scanner's own controls show that it finds
  each of these however it is imported or aliased.
- Checkpoints are read with safetensors only: a pickle or a ``torch.save`` file named
  ``.safetensors`` is refused by every loader with a one-line CheckpointError, and the code its
  unpickling would run (creating a marker file) never runs; the same payload through ``pickle``
  and ``torch.load(weights_only=False)`` does create the marker (the positive control).
- Every config string that becomes a path (a run config's ``name``, the default
  ``runs/<name>-<time>``; a compare or audit file's ``name``, or its file name when it has none,
  and the run labels built from its methods and data sets; an attack's name and threat model,
  which name ``RUN/attacks/<attack>-<threat>``) is one path component or refused with one line,
  and the refused commands write nothing anywhere.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from rvepfl.cli import main
from rvepfl.config import MAX_NAME_BYTES, check_name, config_from_dict
from rvepfl.errors import CheckpointError, ConfigError
from rvepfl.experiments.spec import load_suite, suite_from_dict
from rvepfl.io import load_tensors, read_metadata, save_tensors

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("src", "benchmarks")

# --------------------------------------------------------------------------------------------
# the scan
# --------------------------------------------------------------------------------------------

_PICKLERS = ("pickle", "cPickle", "_pickle", "dill", "cloudpickle")
#: Fully qualified names that deserialise with pickle (or run code) whatever their arguments.
UNSAFE: dict[str, str] = {
    **{f"{m}.{f}": "unpickles" for m in _PICKLERS for f in ("load", "loads", "Unpickler")},
    "joblib.load": "unpickles",
    "shelve.open": "unpickles (shelve stores pickles)",
    "shelve.Shelf": "unpickles (shelve stores pickles)",
    "shelve.DbfilenameShelf": "unpickles (shelve stores pickles)",
    "marshal.load": "loads code objects",
    "marshal.loads": "loads code objects",
    "pandas.read_pickle": "unpickles",
    "yaml.load": "can build arbitrary objects (use yaml.safe_load)",
    "yaml.unsafe_load": "can build arbitrary objects (use yaml.safe_load)",
    "yaml.full_load": "can build arbitrary objects (use yaml.safe_load)",
    "builtins.eval": "runs code from a string",
    "builtins.exec": "runs code from a string",
}
#: Loaders that are safe only with one keyword argument set to one constant.
CHECKED: dict[str, tuple[str, bool]] = {
    "torch.load": ("weights_only", True),
    "torch.serialization.load": ("weights_only", True),
    "numpy.load": ("allow_pickle", False),
}


class Scanner(ast.NodeVisitor):
    """Finds the uses of :data:`UNSAFE` and the unchecked uses of :data:`CHECKED` in a module,
    resolving ``import x as y`` and ``from x import y as z``."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.aliases: dict[str, str] = {}
        self.problems: list[str] = []

    def flag(self, node: ast.AST, text: str) -> None:
        self.problems.append(f"{self.where}:{getattr(node, 'lineno', 0)}: {text}")

    def resolve(self, node: ast.AST) -> str | None:
        """The dotted name an expression refers to, through the module's imports."""
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return self.aliases[node.id]
            return f"builtins.{node.id}" if node.id in ("eval", "exec") else node.id
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")
        for alias in node.names:
            if alias.name == "*":
                if module.split(".")[0] in (*_PICKLERS, "marshal", "shelve", "joblib"):
                    self.flag(node, f"`from {module} import *` brings in unpickling functions")
                continue
            full = f"{module}.{alias.name}"
            self.aliases[alias.asname or alias.name] = full
            if full in UNSAFE or full in CHECKED:
                why = UNSAFE.get(full, "must be called with checked arguments")
                self.flag(node, f"imports {full}, which {why}")

    def visit_Call(self, node: ast.Call) -> None:
        name = self.resolve(node.func)
        if name in CHECKED:
            key, safe = CHECKED[name]
            given = {k.arg: k.value for k in node.keywords}
            value = given.get(key)
            if None in given or not (isinstance(value, ast.Constant) and value.value is safe):
                self.flag(node, f"{name} without {key}={safe} (it would unpickle)")
            for child in [*node.args, *node.keywords]:
                self.visit(child)
            return
        self.generic_visit(node)

    def _reference(self, node: ast.Name | ast.Attribute) -> None:
        name = self.resolve(node)
        if name in UNSAFE:
            self.flag(node, f"{name} {UNSAFE[name]}")
        elif name in CHECKED:
            self.flag(node, f"{name} passed around: its arguments cannot be checked")
        else:
            self.generic_visit(node)

    visit_Name = _reference
    visit_Attribute = _reference


def scan(source: str, where: str = "<snippet>") -> list[str]:
    scanner = Scanner(where)
    scanner.visit(ast.parse(source))
    return scanner.problems


@pytest.mark.parametrize(
    "source",
    [
        "import pickle\npickle.loads(b'')",
        "import pickle as p\nloader = p.load",
        "from pickle import loads as l\n",
        "from _pickle import Unpickler\n",
        "import dill\ndill.loads(b'')",
        "import joblib\njoblib.load('m.joblib')",
        "import shelve\nshelve.open('db')",
        "import marshal\nmarshal.loads(b'')",
        "import pandas as pd\npd.read_pickle('x')",
        "import yaml\nyaml.load(text)",
        "from pickle import *\n",
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "import torch as t\nt.load('x.pt', **options)",
        "from torch import load\nload('x.pt')",
        "import torch.serialization\ntorch.serialization.load('x')",
        "import numpy as np\nnp.load('x.npy')",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import numpy\nf = numpy.load",
        "eval('1 + 1')",
        "exec('x = 1')",
        "import builtins\nbuiltins.exec('x = 1')",
    ],
)
def test_the_scanner_finds_unsafe_loading(source: str) -> None:
    assert scan(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import pickletools\npickletools.genops(b'')",
        "import pickle\npickle.dumps(1)",  # writing a pickle runs nothing
        "import torch\ntorch.load('x.pt', weights_only=True)",
        "import numpy as np\nnp.load('x.npz', allow_pickle=False)",
        "model.eval()",
        "import yaml\nyaml.safe_load(text)",
        "from safetensors.torch import load_file\nload_file('x.safetensors')",
        "def load(path):\n    return path\nload('x')",
    ],
)
def test_the_scanner_passes_safe_code(source: str) -> None:
    assert scan(source) == []


def test_no_unsafe_loading_in_src_or_benchmarks() -> None:
    files = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 30 and ROOT / "src" / "rvepfl" / "data" / "unpickler.py" in files
    problems = [p for f in files for p in scan(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert problems == [], "unsafe loading:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------
# checkpoints: safetensors only
# --------------------------------------------------------------------------------------------


class CreatesFile:
    """Pickles as a call of ``open(path, "w")``: unpickling it creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.path, "w")


def _payloads(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """Files named .safetensors whose unpickling would create ``marker``."""
    state = {"classifier.weight": CreatesFile(marker)}
    out = {}
    for protocol in (2, 5):
        out[f"pickle{protocol}"] = tmp_path / f"pickle{protocol}.safetensors"
        out[f"pickle{protocol}"].write_bytes(pickle.dumps(state, protocol=protocol))
    out["torch.save"] = tmp_path / "torch_save.safetensors"
    torch.save(state, out["torch.save"])
    return out


def _loaders() -> dict[str, object]:
    from rvepfl.attacks.evaluator import Evaluator
    from rvepfl.fl.store import load_client_state

    ref = {"classifier.weight": torch.zeros(2)}
    return {
        "read_metadata": read_metadata,
        "load_tensors": load_tensors,
        "load_tensors(kind, expected)": lambda p: load_tensors(p, expected=ref, kind="rvepfl-global-state"),
        "load_client_state": lambda p: load_client_state(p, ref),
        "Evaluator.load": Evaluator.load,
    }


@pytest.mark.parametrize("payload", ["pickle2", "pickle5", "torch.save"])
@pytest.mark.parametrize("loader", sorted(_loaders()))
def test_a_pickle_named_safetensors_is_refused_and_never_run(tmp_path: Path, payload: str, loader: str) -> None:
    marker = tmp_path / "pwned"
    path = _payloads(tmp_path, marker)[payload]
    with pytest.raises(CheckpointError) as info:
        _loaders()[loader](path)  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert not marker.exists()


def test_the_payloads_do_run_when_unpickled(tmp_path: Path) -> None:
    """The positive control: the files above are live, so the test above would see them run."""
    marker = tmp_path / "pwned"
    paths = _payloads(tmp_path, marker)
    pickle.loads(paths["pickle5"].read_bytes())
    assert marker.exists()
    marker.unlink()
    copy = tmp_path / "copy.pt"  # torch.load hands a .safetensors name to safetensors itself
    copy.write_bytes(paths["torch.save"].read_bytes())
    torch.load(copy, weights_only=False)
    assert marker.exists()


def test_safetensors_round_trip_keeps_only_tensors_and_string_metadata(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_tensors(path, {"w": torch.ones(2, 3)}, {"format": "rvepfl-global-state", "round": "1"})
    assert read_metadata(path) == {"format": "rvepfl-global-state", "round": "1"}
    assert load_tensors(path, kind="rvepfl-global-state")["w"].eq(1).all()


# --------------------------------------------------------------------------------------------
# names that become paths
# --------------------------------------------------------------------------------------------

ESCAPING = ["../../x", "..", ".", "", "/tmp/x", "a/b", "a\\b", "a\x00b", "a\nb", "tab\there",
            "x" * (MAX_NAME_BYTES + 1), "é" * (MAX_NAME_BYTES // 2 + 1), "\ud800"]


@pytest.mark.parametrize("name", ESCAPING)
def test_names_that_are_not_one_path_component_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"Expected `name` to be a directory name") as info:
        check_name(name)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="`name`"):
        config_from_dict({"name": name})


@pytest.mark.parametrize("name", ["quick", "compare-quick", "x y_z.1", "x" * MAX_NAME_BYTES, "é" * 100, "...",
                                  ".hidden"])
def test_plain_names_are_accepted(name: str) -> None:
    assert check_name(name) == name
    assert config_from_dict({"name": name}).name == name


COMPARE = {"methods": ["fedavg"], "datasets": ["mnist"], "seeds": [0]}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"name": "../escape"}, "`name`"),
        ({"name": "/tmp/escape"}, "`name`"),
        ({"methods": ["../escape"]}, "Unknown method '../escape'"),
        ({"datasets": ["../escape"]}, "Unknown dataset '../escape'"),
        ({"dataset_overrides": {"../escape": {"data": {"subset": 10}}}}, r"`\[dataset_overrides\.\.\./escape\]`"),
        ({"overrides": {"../escape": {"train": {"rounds": 1}}}}, r"`\[overrides\.\.\./escape\]`"),
        ({"base": {"name": "../escape"}}, "`base.name` is set by the compare file"),
    ],
)
def test_compare_names_that_would_escape_are_refused(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        suite_from_dict({**COMPARE, **change})


@pytest.mark.parametrize(
    ("audit", "match"),
    [
        ({"attacks": ["../../escape"]}, r"Unknown name '\.\./\.\./escape' in `audit\.attacks`"),
        ({"miface_threats": ["../escape"]}, r"Unknown name '\.\./escape' in `audit\.miface_threats`"),
        ({"update_attacks": ["../escape"]}, r"Unknown name '\.\./escape' in `audit\.update_attacks`"),
    ],
)
def test_audit_names_that_would_escape_are_refused(audit: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        suite_from_dict({**COMPARE, "audit": audit}, audit=True)


def test_every_compare_run_directory_is_one_component_under_runs() -> None:
    spec = suite_from_dict({"methods": ["rvepfl", "fedavg", "dp-fedavg"], "datasets": ["mnist", "fmnist"],
                              "seeds": [0, 7]})
    for run in spec.runs:
        assert Path(run.label).name == run.label and run.label not in (".", "..")
        assert check_name(run.cfg.name) == run.label


def test_a_compare_file_named_dotdot_has_no_name_to_fall_back_on(tmp_path: Path) -> None:
    path = tmp_path / "...toml"  # its stem, the default name, is ".."
    path.write_text('methods = ["fedavg"]\ndatasets = ["mnist"]\nseeds = [0]\n')
    with pytest.raises(ConfigError, match=r"\.\.\.toml: Expected `name` to be a directory name .* got '\.\.'"):
        load_suite(path)


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root``: its mode and, for a file, the SHA-256 of its bytes."""
    out: dict[str, tuple[int, str]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if name in files else "dir"
            out[str(path.relative_to(root))] = (path.lstat().st_mode, digest)
    return out


_LISTS = '\nmethods = ["fedavg"]\ndatasets = ["mnist"]\nseeds = [0]\n'
SANDBOX_FILES = {
    "nul.toml": 'name = "a\\u0000b"\n',
    "escape.toml": 'name = "../escape"' + _LISTS + "[audit]\n",
    "escape-attack.toml": 'name = "ok"' + _LISTS + '[audit]\nattacks = ["../../escape"]\n',
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/a/b/work`` holding :data:`SANDBOX_FILES` and ``runs/tiny-<time>``, trained there
    by ``rvepfl train`` with no ``--out``; ``../../x`` from there still lands inside ``<tmp>``."""
    root = tmp_path_factory.mktemp("sandbox")
    cwd = root / "a" / "b" / "work"
    cwd.mkdir(parents=True)
    for name, text in SANDBOX_FILES.items():
        (cwd / name).write_text(text)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        code = main(["train", "--set", "name=tiny", "--method", "fedavg", "--subset", "100", "--clients", "2",
                     "--rounds", "1", "--local-epochs", "1", "--threads", "1", "--quiet"])
    finally:
        os.chdir(old)
    assert code == 0
    return root


def test_the_default_run_directory_is_under_runs(sandbox: Path) -> None:
    made = [p.relative_to(sandbox).as_posix() for p in (sandbox / "a" / "b" / "work" / "runs").iterdir()]
    assert len(made) == 1 and re.fullmatch(r"a/b/work/runs/tiny-\d{8}-\d{6}", made[0]), made
    assert sorted(p.name for p in sandbox.iterdir()) == ["a"]


ESCAPE_COMMANDS = [
    ["train", "--set", "name=../../escape"],
    ["train", "--set", "name=..", "--method", "fedavg"],
    ["train", "--set", "name={absolute}"],
    ["train", "--config", "nul.toml"],
    ["compare", "--config", "escape.toml"],
    ["compare", "--config", "escape.toml", "--smoke"],
    ["audit", "--config", "escape.toml"],
    ["audit", "--config", "escape-attack.toml"],
    ["attack", "../../escape", "--run", "{run}"],
    ["attack", "ig", "--threat-model", "../../escape", "--run", "{run}"],
    ["attack", "miface", "--threat-model", "../../../escape", "--run", "{run}"],
]


@pytest.mark.parametrize("argv", ESCAPE_COMMANDS, ids=[" ".join(a) for a in ESCAPE_COMMANDS])
def test_a_name_cannot_make_a_command_write_anywhere(argv: list[str], sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cwd = sandbox / "a" / "b" / "work"
    monkeypatch.chdir(cwd)
    run = next((cwd / "runs").iterdir())
    before = snapshot(sandbox)
    capsys.readouterr()
    code = main([a.format(absolute=sandbox / "escape", run=run) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert snapshot(sandbox) == before
    assert not list(sandbox.parent.glob("*escape*"))
