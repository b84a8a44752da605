"""The allocator setting and the benchmark report's table (the benchmarks themselves are not tests)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

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
