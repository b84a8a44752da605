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
