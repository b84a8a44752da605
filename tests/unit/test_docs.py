"""The docs match the code: the configuration reference is generated from it and current, every
setting has a meaning, every CLI command is documented, and the README links every page of docs/."""

import dataclasses
import importlib.util
import re
from pathlib import Path

from rvepfl import registry
from rvepfl.cli import app
from rvepfl.config import EngineConfig
from rvepfl.params import field_docs

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_config_reference_is_generated_from_the_code_and_current():
    reference = _script("config_reference")
    text = (ROOT / "docs" / "config.md").read_text()
    block = text.split(reference.BEGIN)[1].split(reference.END)[0]
    assert block == "\n" + reference.render(), "run: python scripts/config_reference.py"
    for section in registry.sections():
        assert f"`[{section}]`" in block, section


def test_every_setting_has_a_meaning():
    engine = EngineConfig()
    classes = [EngineConfig, *(type(getattr(engine, f.name)) for f in dataclasses.fields(EngineConfig)
                               if dataclasses.is_dataclass(getattr(engine, f.name))), *registry.sections().values()]
    for cls in classes:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(f.type) and not dataclasses.is_dataclass(getattr(cls(), f.name)):
                assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"


def test_every_cli_command_is_in_the_cli_reference():
    cli = (ROOT / "docs" / "cli.md").read_text()
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        assert f"rvepfl {name}" in cli, name


def test_the_readme_links_every_page_of_docs():
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in README, page.name
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).exists(), link


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
