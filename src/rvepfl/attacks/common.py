"""What every attack's runner shares: reading an attack's ``summary.json`` and tracking the time
left in an attack (kept apart so that :mod:`rvepfl.attacks.runner` and
:mod:`rvepfl.attacks.mia_run` both use them without importing each other)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rvepfl.progress import Eta, Ticker, time_left

__all__ = ["STATUS_EVERY", "Tracker", "read_summary"]

STATUS_EVERY = 1.0
"""Seconds between two in-progress lines of an attack (``run_attack``'s ``status``)."""


def read_summary(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class Tracker:
    """The time left in an attack, in iterations: ``eta`` is timed from the first iteration
    reported (the set-up before it, and the observations of a resumed attack, are left out of
    the pace), and ``status`` is told at most every :data:`STATUS_EVERY` seconds."""

    def __init__(self, total: int, status: Callable[[str], None] | None) -> None:
        self.eta = Eta(total)
        self.status = status
        self._begun = False
        self._tick = Ticker(STATUS_EVERY)

    def progress(self, base: int, head: Callable[[int, int], str]) -> Callable[[int, int], None]:
        """The attack's ``progress(done, total)`` for a piece of it starting after ``base``
        iterations; ``head(done, total)`` says where it stands."""

        def tell(done: int, total: int) -> None:
            if not self._begun:
                self.eta.begin(base + done)
                self._begun = True
            if self.status is not None and self._tick.due():
                self.status(f"{head(done, total)}; {self.left(base + done)}")

        return tell

    def left(self, done: int | None = None) -> str:
        return time_left(self.eta.left(done), " in the attack")
