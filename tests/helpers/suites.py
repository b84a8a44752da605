"""Tiny compare files for the tests of `rvepfl compare` and `rvepfl audit`."""

from __future__ import annotations

from pathlib import Path


def toml_text(methods: list[str], seeds: list[int], rounds: int = 1, name: str = "tiny") -> str:
    """A compare file: ``methods`` on MNIST, 200 bundled images, 2 clients, ``rounds`` rounds of
    one local epoch at batch 32, one thread in one process."""
    quoted = ", ".join(f'"{m}"' for m in methods)
    return f"""
name = "{name}"
methods = [{quoted}]
datasets = ["mnist"]
seeds = {seeds}
[base]
threads = 1
workers = 1
device = "cpu"
[base.data]
subset = 200
num_clients = 2
[base.train]
rounds = {rounds}
local_epochs = 1
batch_size = 32
"""


def finished_suite(root: Path, command: str, text: str) -> Path:
    """Write ``text`` as ``root``/suite.toml, run ``rvepfl COMMAND`` (compare or audit) on it to the
    end in this process, and return its output directory."""
    from rvepfl.cli import main

    (root / "suite.toml").write_text(text)
    assert main([command, "--config", str(root / "suite.toml"), "--out", str(root / "out"), "--quiet"]) == 0
    return root / "out"


def frontier_text(seeds: list[int], rounds: int = 1, name: str = "tiny-frontier") -> str:
    """A frontier file: FedAvg and NbAFL (epsilon 1 and 100) as :func:`toml_text` makes them,
    attacked by MI-Face (3 iterations) on the released and the stolen model."""
    return toml_text(["fedavg", "nbafl"], seeds, rounds=rounds, name=name) + """[audit]
attacks = ["miface"]
miface_threats = ["released", "stolen"]
evaluator_images = 300
[audit.iterations]
miface = 3
[sweep.nbafl]
key = "nbafl.epsilon"
values = [1.0, 100.0]
"""
