"""The docs match the code: every config key and CLI command is documented in the README."""

import dataclasses
import re
from pathlib import Path

from rvepfl.cli import app
from rvepfl.config import Config

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
            yield from _keys(f.type, f"{prefix}{f.name}.")
        else:
            default = getattr(cls(), f.name)
            if dataclasses.is_dataclass(default):
                yield from _keys(type(default), f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"


def test_every_config_key_is_in_the_readme_table():
    table = README.split("<!-- config-keys -->")[1].split("<!-- /config-keys -->")[0]
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", table, flags=re.M))
    assert set(_keys(Config)) <= documented, sorted(set(_keys(Config)) - documented)


def test_every_cli_command_is_in_the_readme():
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        assert f"rvepfl {name}" in README, name


def test_config_table_defaults_are_the_code_defaults():
    table = README.split("<!-- config-keys -->")[1].split("<!-- /config-keys -->")[0]
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| ([^|]*) \|", table, flags=re.M))
    cfg = Config()
    for key in _keys(Config):
        section, _, leaf = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, leaf)
        cell = rows[key].strip()
        assert cell.startswith("`") and cell.endswith("`"), (key, cell)
        shown = cell.strip("`")
        expected = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
        if isinstance(value, str):
            assert shown.strip('"') == value, (key, shown, value)
        elif isinstance(value, float):
            assert float(shown) == value, (key, shown, value)
        else:
            assert shown == str(expected), (key, shown, value)


def test_help_shows_defaults_without_markup_escapes(capsys):
    """`--help` of every command shows `[default: ...]` / `[required]` as plain text (typer < 0.21
    escaped them for rich markup: `\\[default: 1]`)."""
    from rvepfl.cli import main

    for command in [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]:
        assert main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "\\[" not in out, command
    assert main(["attack", "--help"]) == 0
    assert "[default: 0]" in capsys.readouterr().out
