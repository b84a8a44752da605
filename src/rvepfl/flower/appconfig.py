"""The Flower app directory and how Flower's run config maps onto our TOML config.

A Flower app is a directory with a ``pyproject.toml`` whose ``[tool.flwr.app.components]`` name
the ServerApp and ClientApp and whose ``[tool.flwr.app.config]`` holds the *run config*, which
``flwr run APP CONNECTION --run-config 'k=v'`` may override key by key (Flower accepts only
keys that the file defines). Our apps live in the installed package (:mod:`rvepfl.flower.server`
and :mod:`rvepfl.flower.client`), so the app directory holds nothing but that file, and
:func:`write_app` generates it from a resolved :class:`~rvepfl.config.Config`:

* every key of our config becomes a run-config key with the same dotted name, valued as
  resolved (``train.rounds = 2``, ``data.dataset = "mnist"``, ``faults.min_clients = 1``):
  Flower flattens TOML tables with dots exactly as our ``--set`` does, so
  ``--run-config 'train.rounds=3'`` overrides ``train.rounds`` of the TOML config, and every
  key of our config (and only those) can be overridden;
* a ``server`` table of keys that are not part of the experiment: ``server.out`` (the run
  directory on the SuperLink's machine; a new run is started there, or a stopped one continued
  when its config hash matches) and ``server.wait_nodes`` (seconds to wait for every node).

Generating the file from the TOML config, rather than shipping one with a ``config = "path"``
key, means the run config that Flower records for the run *is* the experiment's config, and the
ServerApp and every ClientApp build the same :class:`Config` from it (the ClientApp checks the
config hash the server sends). No flwr import here: the CLI validates before flwr is needed.

>>> flat = run_config(Config(), out="/tmp/run")
>>> flat["train.rounds"], flat["server.out"]
(7, '/tmp/run')
>>> split_run_config(flat)[0] == Config()
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

import rvepfl
from rvepfl.config import Config, config_from_dict, config_to_dict, flatten
from rvepfl.errors import ConfigError
from rvepfl.io import atomic_write_text

__all__ = ["APP_NAME", "SERVER_KEYS", "app_pyproject", "check_flower_config", "run_config", "split_run_config",
           "write_app"]

APP_NAME = "rvepfl-flower"
SERVER_KEYS: dict[str, Any] = {"out": "", "wait_nodes": 120.0}
"""Run-config keys under ``server.`` with their defaults: the run directory on the server's
machine (required: the ServerApp refuses an empty one) and the seconds to wait for every
client's SuperNode to connect."""


def run_config(cfg: Config, *, out: str | Path = "", wait_nodes: float = SERVER_KEYS["wait_nodes"]) -> dict[str, Any]:
    """The flat run config (dotted keys) of ``cfg`` plus the ``server.`` keys."""
    flat = flatten(config_to_dict(cfg))
    flat["server.out"] = str(out)
    flat["server.wait_nodes"] = float(wait_nodes)
    return flat


def split_run_config(flat: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    """(validated config, server settings) from a flat run config as Flower hands it to the apps.

    Raises :class:`ConfigError` (one line) for unknown keys or bad values: Flower itself only
    refuses keys its pyproject does not define."""
    nested: dict[str, Any] = {}
    server = dict(SERVER_KEYS)
    for key, value in flat.items():
        if key.startswith("server."):
            name = key[len("server."):]
            if name not in SERVER_KEYS:
                raise ConfigError(f"Unknown run-config key `{key}`: allowed server keys: "
                                  f"{', '.join('server.' + k for k in SERVER_KEYS)}")
            server[name] = value
            continue
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Run-config key `{key}` clashes with `{part}`")
        node[leaf] = value
    if not isinstance(server["out"], str):
        raise ConfigError(f"Expected `server.out` to be a string, got {server['out']!r}")
    if isinstance(server["wait_nodes"], bool) or not isinstance(server["wait_nodes"], (int, float)) \
            or not server["wait_nodes"] > 0:
        raise ConfigError(f"Expected `server.wait_nodes` > 0 seconds, got {server['wait_nodes']!r}")
    return check_flower_config(config_from_dict(nested)), server


def check_flower_config(cfg: Config) -> Config:
    """``cfg``, or a one-line :class:`ConfigError` for a setting the Flower apps cannot run."""
    if cfg.train.optimiser == "published-shared":
        raise ConfigError('`train.optimiser = "published-shared"` passes one optimiser from client to client in one '
                          "process; Flower's nodes train on their own: use `rvepfl train` for it")
    return cfg


def app_pyproject(cfg: Config, *, out: str | Path = "", wait_nodes: float = SERVER_KEYS["wait_nodes"]) -> str:
    """The text of the app's ``pyproject.toml`` for ``cfg``."""
    values = config_to_dict(cfg)
    values["server"] = {"out": str(out), "wait_nodes": float(wait_nodes)}
    doc = {
        "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
        "project": {
            "name": APP_NAME,
            "version": rvepfl.__version__,
            "description": "rvepfl's methods on Flower's Deployment Engine (generated by rvepfl)",
            "license": "MIT",
            # The apps are in the installed rvepfl package (with its `flower` extra): every
            # SuperLink and SuperNode machine needs it; Flower's runtime installation is off.
            "dependencies": [f"rvepfl[flower]=={rvepfl.__version__}"],
        },
        "tool": {"flwr": {"app": {
            "publisher": "rvepfl",
            "components": {"serverapp": "rvepfl.flower.server:app", "clientapp": "rvepfl.flower.client:app"},
            "config": values,
        }}},
    }
    header = (
        "# Generated by rvepfl from a TOML config; every key of [tool.flwr.app.config] is an rvepfl\n"
        "# config key (override with `flwr run DIR CONNECTION --run-config 'train.rounds=3'`).\n"
    )
    return header + tomli_w.dumps(doc)


def write_app(directory: str | Path, cfg: Config, *, out: str | Path = "",
              wait_nodes: float = SERVER_KEYS["wait_nodes"]) -> Path:
    """Write the app directory (its ``pyproject.toml``) for ``cfg``; return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "pyproject.toml", app_pyproject(cfg, out=out, wait_nodes=wait_nodes))
    return directory
