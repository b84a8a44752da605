"""What thread count an attack ran with: a spy on a module's ``run_attack``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest
import torch


@contextmanager
def attack_thread_counts(monkeypatch: pytest.MonkeyPatch, module: ModuleType, start: int = 3) -> Iterator[list[int]]:
    """Record torch's thread count at each call of ``module.run_attack`` in the block, with the
    process at ``start`` threads when the block begins (a count no default gives); the process's
    own count comes back after the block."""
    seen: list[int] = []
    real = module.run_attack

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "run_attack", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(start)
    try:
        yield seen
    finally:
        torch.set_num_threads(before)
