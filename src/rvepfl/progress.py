"""Progress lines of a training run, for whichever engine runs it and wherever they go.

:class:`ProgressPrinter` implements the engine's progress events
(:class:`rvepfl.fl.server.Progress`) as one line per client and per round, handed to an
``echo`` function: the CLI's stderr, or the Flower ServerApp's log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ProgressPrinter"]


class ProgressPrinter:
    """One line per client and per round, each passed to ``echo`` (prefixed with ``prefix:``
    when a prefix is given, e.g. the label of one run of a comparison)."""

    def __init__(self, echo: Callable[[str], None], prefix: str = "") -> None:
        self.echo = echo
        self.prefix = prefix
        self.rounds = 0

    def _line(self, text: str) -> None:
        self.echo(f"{self.prefix}: {text.strip()}" if self.prefix else text)

    def round_start(self, round_: int, rounds: int, clients: list[int]) -> None:
        self.rounds = rounds
        self._line(f"round {round_}/{rounds}: {len(clients)} clients")

    def client_done(self, round_: int, index: int, count: int, client: int,
                    metrics: dict[str, dict[str, float]], seconds: float) -> None:
        tr, te, ge = metrics["train"], metrics["test"], metrics["general"]
        self._line(
            f"  round {round_}/{self.rounds} client {index + 1}/{count} (#{client}): "
            f"general acc {ge['acc']:.3f} | train loss {tr['loss']:.4f} acc {tr['acc']:.3f} | "
            f"test loss {te['loss']:.4f} acc {te['acc']:.3f} | {seconds:.1f}s"
        )

    def client_failed(self, round_: int, index: int, count: int, client: int, failure: Any) -> None:
        self._line(f"  round {round_}/{self.rounds} client {index + 1}/{count} (#{client}) FAILED "
                   f"({failure.kind} after {failure.seconds:.1f}s): {failure.message}")

    def round_done(self, round_: int, means: dict[str, dict[str, float]], seconds: float) -> None:
        te = means["test"]
        self._line(
            f"round {round_}/{self.rounds} done in {seconds:.1f}s: mean client test acc {te['acc']:.4f} "
            f"loss {te['loss']:.4f} (general acc {means['general']['acc']:.4f})"
        )
