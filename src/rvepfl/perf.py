"""Process-wide settings that make CPU training faster, each justified by a benchmark.

Training the RVE-PFL encoder allocates and frees the same large buffers every step (the dense
layer's 75 MB weight gradient, the 9 MB conv activations). glibc serves blocks above its mmap
threshold (at most 32 MB by default) with fresh ``mmap`` calls and returns freed heap tops to the
kernel, so every step pays for hundreds of thousands of page faults while the kernel zeroes new
pages. Raising the mmap and trim thresholds keeps those buffers in the heap for reuse, so page
faults fall by an order of magnitude and a local epoch gets faster: ``python -m benchmarks``
measures the effect as ``allocator_speedup`` (the figure is in BENCHMARKS.md). The buffers are
reused instead of returned and requested again, so freed memory stays with the process.

Set ``RVEPFL_TUNE_ALLOCATOR=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["tune_allocator"]

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
