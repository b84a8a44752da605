"""Progress lines and the time left, for training, comparisons, audits and attacks.

- :func:`format_duration` and :func:`time_left` write a duration for people (``3 min 20 s``,
  ``about 3 min 20 s left``);
- :class:`Eta` estimates the time left of a job from the pace of its units done so far (rounds,
  clients, runs, attack iterations), leaving out units found done without being timed (the
  rounds of a resumed run, a skipped run);
- :class:`ProgressStream` writes to stderr: finished lines as plain lines, and an in-progress
  status line that a terminal rewrites in place, while logs and pipes get plain lines only, at
  most one status line per ``plain_every`` seconds;
- :class:`ProgressPrinter` implements the engine's progress events
  (:class:`rvepfl.fl.server.Progress`) as one line per client and per round, handed to an
  ``echo`` function: the CLI's :class:`ProgressStream`, or the Flower ServerApp's log.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Eta", "ProgressPrinter", "ProgressStream", "Ticker", "format_duration", "time_left"]

Clock = Callable[[], float]


def format_duration(seconds: float) -> str:
    """A duration as people write it: seconds under a minute, minutes and seconds under an
    hour, else hours and minutes.

    >>> [format_duration(s) for s in (0.4, 45, 59.6, 200, 3599.7, 3725, 90061)]
    ['0 s', '45 s', '1 min 00 s', '3 min 20 s', '1 h 00 min', '1 h 02 min', '25 h 01 min']
    """
    if not seconds >= 0:  # negative or NaN
        raise ValueError(f"Expected `seconds` >= 0, got {seconds!r}")
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def time_left(seconds: float | None, where: str = "") -> str:
    """``about 3 min 20 s left`` (plus ``where``, e.g. `` in the run``), or ``estimating the time
    left`` while there is nothing to estimate from (``seconds`` is None).

    >>> time_left(200, " in the run"), time_left(None)
    ('about 3 min 20 s left in the run', 'estimating the time left')
    """
    if seconds is None:
        return "estimating the time left"
    return f"about {format_duration(max(seconds, 1.0))} left{where}"


class Eta:
    """The time left of a job of ``total`` units, from the pace of the units done so far.

    The pace is the wall-clock time since the estimator was made over the units done since
    then; units found done without being timed (the rounds of a resumed run, a skipped run)
    are counted by :meth:`skip`, as done and out of the pace. Units may be fractions (a round
    of which 3 of 10 clients are done is 0.3 rounds).

    >>> now = [0.0]
    >>> eta = Eta(10, clock=lambda: now[0])
    >>> eta.skip(4)  # e.g. 4 rounds of a resumed run
    >>> eta.left() is None  # nothing timed yet
    True
    >>> now[0] = 30.0
    >>> eta.left(done=6)  # 2 units in 30 s, 4 to go
    60.0
    """

    def __init__(self, total: float, *, clock: Clock = time.monotonic) -> None:
        if not total >= 0:
            raise ValueError(f"Expected `total` >= 0, got {total!r}")
        self.total = float(total)
        self.done = 0.0
        self._untimed = 0.0
        self._clock = clock
        self._start = clock()

    def begin(self, done: float) -> None:
        """Time from now on: the ``done`` units done so far, and the time they took (a warm-up,
        say), are left out of the pace."""
        self.done = self._untimed = float(done)
        self._start = self._clock()

    def skip(self, units: float) -> None:
        """``units`` found done, not timed here: done, but out of the pace."""
        self.done += units
        self._untimed += units

    def advance(self, units: float = 1.0) -> None:
        """``units`` more done, timed here."""
        self.done += units

    def left(self, done: float | None = None) -> float | None:
        """Seconds left once ``done`` units (default: those counted so far) are done; None
        before any timed unit is done."""
        done = self.done if done is None else done
        timed = done - self._untimed
        if timed <= 0:
            return None
        return max(self.total - done, 0.0) * (self._clock() - self._start) / timed


class Ticker:
    """True at most once per ``every`` seconds (the first call included), for callbacks called
    far more often than their output is worth.

    >>> now = [0.0]
    >>> tick = Ticker(2.0, clock=lambda: now[0])
    >>> [tick.due() for now[0] in (0.0, 1.0, 2.5, 3.0)]
    [True, False, True, False]
    """

    def __init__(self, every: float, *, clock: Clock = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        return True


class ProgressStream:
    """Progress on a text stream (default: ``sys.stderr`` at the time of writing).

    :meth:`line` writes a finished line. :meth:`live` and :meth:`status` show how far a piece of
    work has gone: on a terminal (``isatty()``) both rewrite one in-progress line in place
    (cut to the terminal's width, erased before the next finished line); elsewhere (a log, a
    pipe, CI) :meth:`live` writes nothing and :meth:`status` a plain line, at most one per
    ``plain_every`` seconds since the last line written.
    """

    def __init__(self, stream: TextIO | None = None, *, plain_every: float = 10.0,
                 clock: Clock = time.monotonic) -> None:
        self._stream = stream
        self.plain_every = plain_every
        self._clock = clock
        self._shown = 0  # characters of the in-progress line on screen
        self._last_line = clock()

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def interactive(self) -> bool:
        """Whether the stream is a terminal (in-progress lines are rewritten in place)."""
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False

    def line(self, text: str) -> None:
        """A finished line, after erasing the in-progress one."""
        self._write(self._erase() + text + "\n")
        self._last_line = self._clock()

    def live(self, text: str) -> None:
        """An in-progress line, on a terminal only."""
        if self.interactive:
            self._show(text)

    def status(self, text: str) -> None:
        """An in-progress line: rewritten in place on a terminal, else a plain line at most once
        per ``plain_every`` seconds."""
        if self.interactive:
            self._show(text)
        elif self._clock() - self._last_line >= self.plain_every:
            self.line(text)

    def clear(self) -> None:
        """Erase the in-progress line, if one is shown (before other output, or at the end)."""
        if self._shown:
            self._write(self._erase())

    def _show(self, text: str) -> None:
        width = shutil.get_terminal_size().columns - 1
        text = text if len(text) <= width else text[: max(width - 3, 0)] + "..."
        self._write(self._erase() + text)
        self._shown = len(text)

    def _erase(self) -> str:
        if not self._shown:
            return ""
        blank, self._shown = " " * self._shown, 0
        return f"\r{blank}\r"

    def _write(self, text: str) -> None:
        if text:
            self.stream.write(text)
            self.stream.flush()


class ProgressPrinter:
    """One line per client and per round, each passed to ``echo`` (prefixed with ``prefix:``
    when a prefix is given, e.g. the label of one run of a comparison), with the time left in
    the run on each round's line.

    Client ids count from 0, as everywhere else (run directories, ``--client``); each client's
    line also gives its place in the round (``client 3 (4 of 10)``). The test accuracy "before
    local training" is that of the client's model on its test split once it has taken in the
    global shared state and before it trains (FedAvg: the global model; a personalised method:
    the global shared part with the client's private part): the run directory's
    ``general_test_*`` CSVs.

    ``live``, if given, receives an in-progress line after every client (clients done, time left
    in the round and in the run): :meth:`ProgressStream.live`, shown on a terminal only.
    """

    def __init__(self, echo: Callable[[str], None], prefix: str = "", *,
                 live: Callable[[str], None] | None = None, clock: Clock = time.monotonic) -> None:
        self.echo = echo
        self.prefix = prefix
        self.live = live
        self.rounds = 0
        self._clock = clock
        self._run: Eta | None = None
        self._round: Eta | None = None

    def _text(self, text: str) -> str:
        return f"{self.prefix}: {text.strip()}" if self.prefix else text

    def _line(self, text: str) -> None:
        self.echo(self._text(text))

    def _show(self, round_: int, done: int, count: int) -> None:
        if self.live is None or self._run is None or self._round is None:
            return
        run_left = self._run.left(round_ - 1 + done / count if count else round_)
        if done == count:
            where = "saving the round"
        elif done == 0:
            where = time_left(run_left, " in the run")
        else:
            where = time_left(self._round.left(done), " in this round")
            if run_left is not None and round_ < self.rounds:
                where += f", {format_duration(max(run_left, 1.0))} in the run"
        self.live(self._text(f"round {round_}/{self.rounds}: {done} of {count} clients done; {where}"))

    def round_start(self, round_: int, rounds: int, clients: list[int]) -> None:
        self.rounds = rounds
        if self._run is None:  # the rounds of a resumed run were not timed here
            self._run = Eta(rounds, clock=self._clock)
            self._run.skip(round_ - 1)
        self._round = Eta(len(clients), clock=self._clock)
        self._line(f"round {round_}/{rounds}: {len(clients)} clients")
        self._show(round_, 0, len(clients))

    def _client(self, round_: int, index: int, count: int, client: int) -> str:
        return f"  round {round_}/{self.rounds}, client {client} ({index + 1} of {count})"

    def client_done(self, round_: int, index: int, count: int, client: int,
                    metrics: dict[str, dict[str, float]], seconds: float) -> None:
        tr, te, ge = metrics["train"], metrics["test"], metrics["general"]
        self._line(
            f"{self._client(round_, index, count, client)}: test acc before local training {ge['acc']:.3f} | "
            f"after it: train loss {tr['loss']:.4f} acc {tr['acc']:.3f}, test loss {te['loss']:.4f} "
            f"acc {te['acc']:.3f} | {seconds:.1f} s"
        )
        self._show(round_, index + 1, count)

    def client_failed(self, round_: int, index: int, count: int, client: int, failure: Any) -> None:
        self._line(f"{self._client(round_, index, count, client)} FAILED "
                   f"({failure.kind} after {failure.seconds:.1f} s): {failure.message}")
        self._show(round_, index + 1, count)

    def round_done(self, round_: int, means: dict[str, dict[str, float]], seconds: float) -> None:
        te = means["test"]
        left = ""
        if self._run is not None and round_ < self.rounds:
            left = f"; {time_left(self._run.left(round_), ' in the run')}"
        self._line(
            f"round {round_}/{self.rounds} done in {seconds:.1f} s: mean client test acc {te['acc']:.4f} "
            f"loss {te['loss']:.4f} ({means['general']['acc']:.4f} before local training){left}"
        )
