"""The allocator setting, the attacks' threads and OpenMP's wait policy, the benchmark report's table,
the paper part's set-up and the contention part's environment (no timing is tested)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import table
from rvepfl.perf import tune_allocator


def _tuned_in_child(flag: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RVEPFL_TUNE_ALLOCATOR"}
    if flag is not None:
        env["RVEPFL_TUNE_ALLOCATOR"] = flag
    code = "from rvepfl.perf import tune_allocator; print(tune_allocator(), tune_allocator())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_allocator_applies_on_glibc_and_is_idempotent():
    assert _tuned_in_child(None) == "True True"


def test_tune_allocator_can_be_switched_off():
    assert _tuned_in_child("0") == "False False"


def test_tune_allocator_returns_a_bool():
    assert isinstance(tune_allocator(), bool)


def test_table_marks_targets_met_missed_and_skipped():
    text = table({"fl_overhead_ratio": 1.05, "flop_rate_fraction": 0.42, "miface_speedup_vs_art": None,
                  "allocator_speedup": 1.3})
    lines = text.splitlines()
    assert lines[0] == "| figure | measured | target | met |"
    assert "| `fl_overhead_ratio` | 1.05 | <= 1.10 | yes |" in lines
    assert "| `flop_rate_fraction` | 0.42 | >= 0.50 | **no** |" in lines
    assert "| `miface_speedup_vs_art` | n/a | >= 5 | skipped |" in lines
    assert "| `allocator_speedup` | 1.30x |  |  |" in lines
    assert not any("rss_growth" in line for line in lines)  # absent keys are left out


def test_tiled_mnist_is_a_full_size_mnist_of_the_bundled_digits(tmp_path):
    from benchmarks.paper import write_tiled_mnist
    from rvepfl.data.datasets import load_dataset

    full = load_dataset("mnist", write_tiled_mnist(tmp_path / "mnist"))
    bundled = load_dataset("mnist", None)
    assert full.train_x.shape == (60_000, 28, 28, 1) and full.test_x.shape == (10_000, 28, 28, 1)
    n = len(bundled.train_y) + len(bundled.test_y)
    assert (full.train_x[:n] == np.concatenate([bundled.train_x, bundled.test_x])).all()
    assert (full.train_y[n : 2 * n] == np.concatenate([bundled.train_y, bundled.test_y])).all()


@pytest.mark.slow
def test_paper_part_trains_paper_size_clients(tmp_path):
    """The paper part's code path, shrunk: 1 of the 150 clients a round, 1 local epoch, on the CPU."""
    from benchmarks.paper import paper_benchmark

    out = paper_benchmark("cpu", 1, local_epochs=1, log=lambda line: None)
    low, high = out["setting"]["train_images_per_client"]
    assert 415 <= low <= high <= 425  # 70,000 images / 150 clients, 90 % of each to train on
    assert out["setting"]["clients_trained"] == 1
    assert low <= out["images_trained"] <= high
    assert out["paper_round_seconds"] is None  # not the full round
    assert out["paper_images_per_second"] == pytest.approx(out["images_trained"] / out["round_seconds"])
    assert 0 < out["round_train_seconds"] and 0 < out["round_eval_seconds"]


def test_paper_part_refuses_a_bad_client_count(capsys):
    from benchmarks.__main__ import main

    assert main(["--only", "paper", "--paper-clients", "151"]) == 2
    assert capsys.readouterr().err.strip() == "error: expected 1 <= --paper-clients <= 150, got 151"


def test_parity_table_pairs_seeds_and_marks_the_tolerance():
    from benchmarks.parity import parity_table

    rows = {"fedavg": {"mean": {"32": 0.90, "bf16-mixed": 0.895}, "differences": [-0.01, 0.0, -0.005],
                       "mean_difference": -0.005, "within": True},
            "nbafl": {"mean": {"32": 0.80, "bf16-mixed": 0.78}, "differences": [-0.02, -0.03, -0.01],
                      "mean_difference": -0.02, "within": False}}
    lines = parity_table({"methods": rows}).splitlines()
    assert lines[2] == "| fedavg | 90.00 % | 89.50 % | -0.50 (-1.0, +0.0, -0.5) | yes |"
    assert lines[3] == "| nbafl | 80.00 % | 78.00 % | -2.00 (-2.0, -3.0, -1.0) | **no** |"


def test_parity_refuses_to_be_told_the_precision(capsys):
    from benchmarks.parity import main

    assert main(["--set", "train.precision=32"]) == 2
    assert capsys.readouterr().err.strip() == "error: --set train.precision is what the table varies: leave it out"


# -- threads -------------------------------------------------------------------------------------
def test_attack_threads_default_to_one_and_restore_the_count():
    import torch

    from rvepfl.perf import ATTACK_THREADS, attack_threads

    before = torch.get_num_threads()
    assert ATTACK_THREADS == 1
    with attack_threads() as threads:
        assert threads == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with attack_threads(None), attack_threads(2) as threads:  # nested: each block restores its own
        assert threads == torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError), attack_threads():
        raise KeyError("the count is restored on an error too")
    assert torch.get_num_threads() == before


def test_attack_threads_zero_keeps_the_process_count_and_negative_is_refused():
    import torch

    from rvepfl.perf import attack_threads

    before = torch.get_num_threads()
    with attack_threads(0) as threads:
        assert threads == torch.get_num_threads() == before
    with pytest.raises(ValueError, match="Expected threads >= 0, got -1"), attack_threads(-1):
        pass


def test_attack_command_defaults_to_one_thread_and_says_so():
    import click
    import typer

    from rvepfl.cli import app

    command = typer.main.get_command(app).commands["attack"]
    option = next(p for p in command.params if p.name == "threads")
    assert option.default is None  # None: attack_threads' default, one thread
    help_text = option.get_help_record(click.Context(command, info_name="attack"))[1]
    assert help_text.endswith("[default: 1]") and "0: torch's default" in help_text


def _passive_in_child(env_extra: dict[str, str], fake_torch: bool = False) -> str:
    """``passive_openmp()``'s result and OMP_WAIT_POLICY afterwards, in a fresh process without torch."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "RVEPFL_PASSIVE_OPENMP")}
    code = ("import os, sys\n" + ("sys.modules['torch'] = object()\n" if fake_torch else "") +
            "from rvepfl.perf import passive_openmp\n"
            "print(passive_openmp(), os.environ.get('OMP_WAIT_POLICY'))")
    done = subprocess.run([sys.executable, "-c", code], env={**env, **env_extra}, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_passive_openmp_sets_the_policy_only_when_it_can_and_may():
    assert _passive_in_child({}) == "True PASSIVE"
    assert _passive_in_child({"OMP_WAIT_POLICY": "ACTIVE"}) == "False ACTIVE"  # the user's own wins
    assert _passive_in_child({"RVEPFL_PASSIVE_OPENMP": "0"}) == "False None"
    assert _passive_in_child({}, fake_torch=True) == "False None"  # too late once torch is loaded


@pytest.mark.slow
def test_the_command_loads_torch_with_passive_openmp():
    """GNU OpenMP shows its spin count with OMP_DISPLAY_ENV=verbose: 0 is the passive policy."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "RVEPFL_PASSIVE_OPENMP")}
    code = "from rvepfl.__main__ import main; main()"

    def spin_count(**extra: str) -> str | None:
        done = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, check=True,
                              env={**env, "OMP_DISPLAY_ENV": "verbose", **extra})
        found = [line.split("=", 1)[1].strip() for line in done.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
        return found[0] if found else None

    passive = spin_count()
    if passive is None:
        pytest.skip("torch's OpenMP is not GNU OpenMP: no GOMP_SPINCOUNT to read")
    assert passive == "'0'"
    assert spin_count(RVEPFL_PASSIVE_OPENMP="0") not in (None, "'0'")  # the default spins


def test_contention_children_get_the_commands_own_thread_settings():
    from benchmarks.contention import child_env

    env = child_env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE",
                     "RVEPFL_PASSIVE_OPENMP": "0", "PYTHONPATH": "/elsewhere", "HOME": "/home/x"})
    assert env["HOME"] == "/home/x"
    assert not {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "RVEPFL_PASSIVE_OPENMP"} & set(env)
    paths = env["PYTHONPATH"].split(os.pathsep)
    import rvepfl

    assert paths[0] == str(Path(rvepfl.__file__).resolve().parents[1]) and paths[-1] == "/elsewhere"
    assert (Path(paths[1]) / "benchmarks" / "contention.py").is_file()


def test_table_has_the_contention_rows():
    lines = table({"contended_attack_slowdown": 1.8, "contended_attack_slowdown_torch_threads": 21.0}).splitlines()
    assert "| `contended_attack_slowdown` | 1.80x | <= 2.5x | yes |" in lines
    assert "| `contended_attack_slowdown_torch_threads` | 21.00x |  |  |" in lines
    assert table({"contended_attack_slowdown": 2.6}).splitlines()[-1].endswith("| **no** |")
