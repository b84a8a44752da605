"""The attack registry: every attack is a class found by it, declares what the rest of the code
reads (threat models, label, settings with meanings), and no code outside the attack classes
compares an attack's name."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from rvepfl.attacks.base import Attack, AttackRequest, parse_params
from rvepfl.attacks.registry import attack, attack_names, attacks
from rvepfl.attacks.threat import THREAT_MODELS
from rvepfl.errors import ConfigError
from rvepfl.params import field_docs

SRC = Path(__file__).resolve().parents[2] / "src" / "rvepfl"


def test_every_attack_declares_what_the_suites_read():
    assert list(attacks()) == list(attack_names())
    for name, a in attacks().items():
        assert isinstance(a, Attack) and a.name == name
        assert a.label and a.description and a.threats, name
        assert set(a.threats) <= set(THREAT_MODELS), name
        assert a.success_label and a.files, name
        assert set(a.audit_options) <= {f.name for f in dataclasses.fields(AttackRequest)}, name
        if a.Params is not None:
            docs = field_docs(a.Params)
            assert all(docs.get(f.name) for f in dataclasses.fields(a.Params)), f"{name}: a setting has no meaning"
            parse_params(a, {})  # the defaults pass its own check
            parse_params(a, dict(a.smoke))  # and so do its smoke settings
        else:
            assert not a.smoke, name


def test_an_unknown_attack_is_a_one_line_error_listing_the_choices():
    with pytest.raises(ConfigError, match=r"^Unknown attack 'xyz': choose one of dlg, idlg, ig, miface") as info:
        attack("xyz")
    assert "\n" not in str(info.value) and all(n in str(info.value) for n in attack_names())


def test_settings_of_an_attack_without_its_own_are_refused():
    with pytest.raises(ConfigError, match=r"^dlg has no settings of its own: drop --param \(steps\)"):
        parse_params(attack("dlg"), {"steps": "3"})


def _compared_names(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """Attack names written as string constants where code compares, looks up or branches on
    them: in a comparison (``==``, ``!=``, ``in``, also inside a tuple, list or set), as a
    subscript (``table["ig"]``), or as a key of a dict literal (``{"ig": ...}[name]``)."""
    found = []

    def constants(node: ast.AST) -> list[ast.Constant]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [c for e in node.elts for c in constants(e)]
        return []

    for node in ast.walk(tree):
        candidates: list[ast.Constant] = []
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                candidates += constants(operand)
        elif isinstance(node, ast.Subscript):
            candidates += constants(node.slice)
        elif isinstance(node, ast.Dict):
            candidates += [k for k in node.keys if k is not None for k in constants(k)]
        elif isinstance(node, ast.match_case):
            candidates += [c for p in ast.walk(node.pattern) if isinstance(p, ast.MatchValue)
                           for c in constants(p.value)]
        found += [(c.lineno, c.value) for c in candidates if c.value in names]
    return found


def test_no_code_compares_an_attack_name():
    """Outside the attack classes themselves (which set their own ``name``), no module of src/
    compares, looks up or branches on an attack's name: what an attack does follows from its class."""
    names = set(attack_names())
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        for line, value in _compared_names(ast.parse(path.read_text()), names):
            offences.append(f"{path.relative_to(SRC)}:{line}: {value!r}")
    assert offences == []


def test_the_scan_finds_what_it_looks_for():
    """The positive control of the test above: each form it forbids is found."""
    code = ('if a == "ig": pass\nif a in ("dlg", "x"): pass\nx = t["miface"]\ny = {"idlg": 1}[a]\n'
            'match a:\n    case "mia": pass\n')
    found = sorted(v for _, v in _compared_names(ast.parse(code), set(attack_names())))
    assert found == ["dlg", "idlg", "ig", "mia", "miface"]


def test_the_attack_reference_is_generated_from_the_code_and_current():
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("config_reference", root / "scripts" / "config_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    text = (root / "docs" / "attacks.md").read_text()
    block = text.split(reference.ATTACK_BEGIN)[1].split(reference.ATTACK_END)[0]
    assert block == "\n" + reference.render_attacks(), "run: python scripts/config_reference.py"
    for name in attack_names():
        assert f"| `{name}` (" in block, name


@pytest.mark.parametrize(("value", "kind", "message"), [
    ("many", int, "Expected `x.k` to be an integer, got 'many'"),
    ("1.5", int, "Expected `x.k` to be an integer, got '1.5'"),
    ("yes", bool, "Expected `x.k` to be true or false, got 'yes'"),
    ("nan?", float, "Expected `x.k` to be a number, got 'nan\\?'"),
    (True, int, "Expected `x.k` to be an integer, got True"),
    ([1], float, r"Expected `x.k` to be a number, got \[1\]"),
])
def test_a_setting_of_the_wrong_type_is_a_one_line_error(value, kind, message):
    from rvepfl.attacks.base import _convert

    with pytest.raises(ConfigError, match=f"^{message}$"):
        _convert("x.k", value, kind)


def test_settings_given_as_text_take_their_field_type():
    from rvepfl.attacks.base import _convert

    assert _convert("x.k", " 3 ", int) == 3 and _convert("x.k", "0.5", float) == 0.5
    assert _convert("x.k", "TRUE", bool) is True and _convert("x.k", 2, float) == 2.0


def test_the_attacks_command_lists_every_attack_its_threat_models_and_settings(capsys):
    from rvepfl.cli import main

    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    for name, a in attacks().items():
        assert any(line.startswith(f"{name} ") and a.label in line for line in out.splitlines()), name
        assert f"threat models: {a.threats[0]} (default)" in out
        for key, (_default, _) in a.settings_doc().items():
            assert f"--param {key}=" in out, (name, key)
