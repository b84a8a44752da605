"""Process-wide CPU settings, each justified by a benchmark: the allocator's thresholds, which make
training faster, and the torch threads of an attack, which keep it fast on a shared machine.

Training the RVE-PFL encoder allocates and frees the same large buffers every step (the dense
layer's weight gradient, the conv activations). glibc serves blocks above its mmap threshold with
fresh ``mmap`` calls and returns freed heap tops to the kernel, so every step pays for many page
faults while the kernel zeroes new pages. Raising the mmap and trim thresholds keeps those buffers
in the heap for reuse, so page faults fall and a local epoch gets faster: ``python -m benchmarks``
measures the effect as ``allocator_speedup`` (the figures are in BENCHMARKS.md). The buffers are
reused instead of returned and requested again, so freed memory stays with the process.

Set ``RVEPFL_TUNE_ALLOCATOR=0`` to leave the allocator alone.

:func:`attack_threads` runs an attack (its evaluator's and reference models' training included)
with one torch thread unless more are asked for, and :func:`passive_openmp` keeps OpenMP's idle
threads from spinning when more are: the reasons are in their docstrings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ATTACK_THREADS", "attack_threads", "passive_openmp", "tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: above any single buffer of the models we train

_state: dict[str, bool] = {}


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; return whether they are raised.

    A no-op (returning False) off Linux, on a C library other than glibc, or when the
    environment variable ``RVEPFL_TUNE_ALLOCATOR`` is ``0``. Safe to call many times.
    """
    if "tuned" in _state:
        return _state["tuned"]
    tuned = False
    if os.environ.get("RVEPFL_TUNE_ALLOCATOR", "1") != "0" and platform.system() == "Linux":
        libc_name = platform.libc_ver()[0]
        path = ctypes.util.find_library("c") if libc_name == "glibc" else None
        if path:
            try:
                libc = ctypes.CDLL(path)
                mallopt = libc.mallopt
                mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                mallopt.restype = ctypes.c_int
                tuned = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(
                    mallopt(_M_TRIM_THRESHOLD, _THRESHOLD)
                )
            except (OSError, AttributeError):
                tuned = False
    _state["tuned"] = tuned
    return tuned


ATTACK_THREADS = 1
"""The torch intra-op threads of an attack unless more are asked for (:func:`attack_threads`)."""


@contextmanager
def attack_threads(requested: int | None = None) -> Iterator[int]:
    """Run the block with the torch intra-op threads of an attack; restore the process's count after.

    ``None`` (`rvepfl attack` without ``--threads``; an audit's, compare's or frontier's attacks of a
    run whose config has ``threads = 0``) gives :data:`ATTACK_THREADS`, one thread; ``N`` >= 1
    gives N; ``0`` keeps the count the process has (torch's default, one per core, unless something
    in the process changed it). Yields the count in use. The count holds for everything the block
    runs in this process: the attack, and the evaluator and LiRA reference models it trains.

    Why one thread by default: with torch's default, one thread per core, an attack slows down
    many times over as soon as another process shares the cores (issue #16; BENCHMARKS.md,
    "Threads on a shared machine"): every parallel operation ends when its slowest thread does, with more runnable
    threads than cores one of them is often waiting for a core, and OpenMP's threads spin while
    they wait (:func:`passive_openmp`), taking core time from the late one. A single thread waits
    for nobody and loses only the share of a core the other job takes. ``python -m benchmarks
    --only contention`` measures the defaults side by side (``contended_attack_slowdown``,
    BENCHMARKS.md). Training has its own setting, the config's ``threads`` and ``workers``
    (several single-threaded worker processes by default).

    Raises ``ValueError`` if ``requested`` is negative.
    """
    if requested is not None and requested < 0:
        raise ValueError(f"Expected threads >= 0, got {requested}")
    import torch

    before = torch.get_num_threads()
    threads = ATTACK_THREADS if requested is None else requested or before
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def passive_openmp() -> bool:
    """Make OpenMP's idle threads sleep instead of spinning: set ``OMP_WAIT_POLICY=PASSIVE`` in
    this process's environment (and so its children's) unless it is set; return whether it was.

    OpenMP reads the variable once, when torch loads it, so this must run before ``import torch``:
    the `rvepfl` command calls it first thing (:mod:`rvepfl.__main__`), and it does nothing (False)
    once torch is imported. It matters only with several threads in one process (`rvepfl attack
    --threads N`, a config's ``threads``): by default GNU OpenMP's threads spin for a while at every
    barrier, which on a machine shared with another job takes the cores from the threads that have
    work (BENCHMARKS.md, "Threads on a shared machine", has the figures: with the passive policy
    a 2-thread attack beside a competing process is much faster, and the competitor does more work
    too). ``python -m benchmarks --only contention`` measures it on the machine at hand, alone too (a
    sleeping thread takes longer to wake up than a spinning one). A single-threaded process, the
    default of `rvepfl attack` and of the training workers, has no barrier to wait at.

    Set ``RVEPFL_PASSIVE_OPENMP=0`` to leave OpenMP's policy alone.
    """
    if "torch" in sys.modules or os.environ.get("RVEPFL_PASSIVE_OPENMP", "1") == "0":
        return False
    if "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
