"""The docs match the code: the configuration reference is generated from it and current, every
setting has a meaning, every CLI command is documented, and the README links every page of docs/."""

import dataclasses
import importlib.metadata
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
    assert main(["train", "--help"]) == 0
    assert "[default: 7]" in capsys.readouterr().out  # the built-in config's train.rounds


def test_every_option_with_a_value_shows_its_default_or_is_required():
    import click
    import typer

    group = typer.main.get_command(app)
    no_default = {"--set", "--param", "--resume"}  # repeatable; a run to continue: nothing to default to
    for name, command in group.commands.items():
        ctx = click.Context(command, info_name=name)
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag or param.opts[0] in no_default:
                continue
            help_text = param.get_help_record(ctx)[1]
            assert "[default: " in help_text or "[required]" in help_text, (name, param.opts[0])


def test_help_lists_the_commands_in_order_with_whole_descriptions(capsys):
    from rvepfl.cli import COMMAND_ORDER, main

    assert main(["--help"]) == 0
    listing = capsys.readouterr().out.split("Commands:")[1]
    names = [line.split()[0] for line in listing.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert names == list(COMMAND_ORDER) == sorted(names, key=COMMAND_ORDER.index)
    assert {c.name or c.callback.__name__ for c in app.registered_commands} <= set(COMMAND_ORDER)
    assert "..." not in listing


def test_version(capsys):
    from rvepfl import __version__
    from rvepfl.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"rvepfl {__version__}\n"
    try:
        assert __version__ == importlib.metadata.version("rvepfl")  # pyproject.toml's version
    except importlib.metadata.PackageNotFoundError:  # not installed: only the source tree
        pass
