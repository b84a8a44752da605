"""Progress output: durations, the time-left estimate, live lines on a terminal and plain lines
elsewhere, the training's progress lines, and --quiet. No training: events are fed by hand and
time is a fake clock."""

from __future__ import annotations

import io

import pytest

from rvepfl.progress import (
    Eta,
    ProgressPrinter,
    ProgressStream,
    Ticker,
    format_duration,
    time_left,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0 s"), (45.4, "45 s"), (59.5, "1 min 00 s"), (200, "3 min 20 s"), (3599.4, "59 min 59 s"),
    (3600, "1 h 00 min"), (3725, "1 h 02 min"), (36000, "10 h 00 min"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_duration_refuses_a_negative_or_nan():
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="Expected `seconds` >= 0"):
            format_duration(bad)


def test_time_left_says_so_while_estimating_and_never_under_a_second():
    assert time_left(None) == "estimating the time left"
    assert time_left(0.2, " in the run") == "about 1 s left in the run"


def test_eta_from_the_pace_of_the_units_timed_here():
    clock = Clock()
    eta = Eta(10, clock=clock)
    assert eta.left() is None  # nothing done yet
    clock.now = 20.0
    eta.advance(2)
    assert eta.left() == pytest.approx(80.0)  # 10 s a unit, 8 to go
    assert eta.left(done=2.5) == pytest.approx(7.5 * 8.0)  # a fraction done: the pace is 8 s a unit
    eta.advance(8)
    assert eta.left() == 0.0


def test_eta_leaves_skipped_units_and_a_warm_up_out_of_the_pace():
    clock = Clock()
    eta = Eta(10, clock=clock)
    eta.skip(5)  # e.g. the rounds of a resumed run, or skipped runs
    assert eta.left() is None
    clock.now = 10.0
    eta.advance(1)
    assert eta.left() == pytest.approx(40.0)  # 1 unit in 10 s, 4 to go
    clock.now = 100.0
    eta.begin(6)  # time from now on: the 100 s so far are left out
    clock.now = 102.0
    assert eta.left(done=8) == pytest.approx(2.0)  # 2 units in 2 s, 2 to go


def test_ticker_is_due_at_most_once_per_period():
    clock = Clock()
    tick = Ticker(1.0, clock=clock)
    due = []
    for t in (0.0, 0.5, 1.0, 1.2, 2.5):
        clock.now = t
        due.append(tick.due())
    assert due == [True, False, True, False, True]


def _columns(monkeypatch, columns: int) -> None:
    import os
    import shutil

    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(80, 24): os.terminal_size((columns, 24)))


def test_a_terminal_rewrites_the_in_progress_line_in_place(monkeypatch):
    _columns(monkeypatch, 100)
    out = FakeStream(tty=True)
    stream = ProgressStream(out)
    stream.line("round 1/2: 2 clients")
    stream.live("round 1/2: 0 of 2 clients done")
    stream.status("ig: iteration 5/10")
    stream.line("done")
    stream.status("again")
    stream.clear()
    stream.clear()  # nothing shown: writes nothing
    assert out.getvalue() == ("round 1/2: 2 clients\n"
                              "round 1/2: 0 of 2 clients done"
                              f"\r{' ' * 30}\rig: iteration 5/10"
                              f"\r{' ' * 18}\rdone\n"
                              f"again\r{' ' * 5}\r")


def test_a_terminal_line_is_cut_to_the_width(monkeypatch):
    _columns(monkeypatch, 20)
    out = FakeStream(tty=True)
    ProgressStream(out).live("x" * 50)
    assert out.getvalue() == "x" * 16 + "..."


def test_logs_get_plain_lines_only_and_a_status_line_at_most_every_ten_seconds():
    out, clock = FakeStream(tty=False), Clock()
    stream = ProgressStream(out, clock=clock)
    stream.live("never in a log")
    stream.status("too soon")  # 0 s after the stream started
    clock.now = 10.0
    stream.status("ig: iteration 500/1000")
    clock.now = 15.0
    stream.status("too soon again")
    stream.line("ig: observation 1/4: PSNR 20.0 dB")
    clock.now = 24.0
    stream.status("too soon after a line")
    clock.now = 25.0
    stream.status("ig: iteration 200/1000")
    stream.clear()
    assert out.getvalue().splitlines() == ["ig: iteration 500/1000", "ig: observation 1/4: PSNR 20.0 dB",
                                           "ig: iteration 200/1000"]
    assert "\r" not in out.getvalue()


METRICS = {"general": {"acc": 0.1, "loss": 2.3}, "train": {"acc": 0.5, "loss": 1.5}, "test": {"acc": 0.4, "loss": 1.7}}


def _round(printer: ProgressPrinter, clock: Clock, round_: int, rounds: int, clients: list[int]) -> None:
    """One round of ``clients``, each taking 10 s."""
    printer.round_start(round_, rounds, clients)
    for i, c in enumerate(clients):
        clock.now += 10.0
        printer.client_done(round_, i, len(clients), c, METRICS, 10.0)
    printer.round_done(round_, {"general": METRICS["general"], "test": METRICS["test"]}, 10.0 * len(clients))


def test_training_lines_number_clients_plainly_and_give_the_time_left_in_the_run():
    lines: list[str] = []
    clock = Clock()
    printer = ProgressPrinter(lines.append, "[1/2] mnist fedavg seed 0", clock=clock)
    _round(printer, clock, 1, 3, [4, 7])
    _round(printer, clock, 2, 3, [0, 4])
    _round(printer, clock, 3, 3, [2, 3])
    assert lines[:4] == [
        "[1/2] mnist fedavg seed 0: round 1/3: 2 clients",
        ("[1/2] mnist fedavg seed 0: round 1/3, client 4 (1 of 2): test acc before local training 0.100 | "
        "after it: train loss 1.5000 acc 0.500, test loss 1.7000 acc 0.400 | 10.0 s"),
        ("[1/2] mnist fedavg seed 0: round 1/3, client 7 (2 of 2): test acc before local training 0.100 | "
        "after it: train loss 1.5000 acc 0.500, test loss 1.7000 acc 0.400 | 10.0 s"),
        ("[1/2] mnist fedavg seed 0: round 1/3 done in 20.0 s: mean client test acc 0.4000 loss 1.7000 "
        "(0.1000 before local training); about 40 s left in the run"),
    ]
    assert lines[7].endswith("; about 20 s left in the run")
    assert lines[-1].startswith("[1/2] mnist fedavg seed 0: round 3/3 done in") and "left" not in lines[-1]


def test_a_resumed_run_estimates_from_the_rounds_trained_here():
    lines: list[str] = []
    clock = Clock()
    printer = ProgressPrinter(lines.append, clock=clock)
    clock.now = 1000.0  # whatever came before is not this run's training
    _round(printer, clock, 5, 10, [0, 1, 2])  # rounds 1-4 were trained before the resume
    assert lines[-1].endswith("; about 2 min 30 s left in the run")  # 30 s a round, 5 to go


def test_the_live_line_tells_the_clients_done_and_the_time_left():
    lines: list[str] = []
    live: list[str] = []
    clock = Clock()
    printer = ProgressPrinter(lines.append, live=live.append, clock=clock)
    _round(printer, clock, 1, 2, [0, 1])
    assert live == ["round 1/2: 0 of 2 clients done; estimating the time left",
                    "round 1/2: 1 of 2 clients done; about 10 s left in this round, 30 s in the run",
                    "round 1/2: 2 of 2 clients done; saving the round"]


def test_the_cli_printer_writes_live_lines_on_a_terminal_and_nothing_with_quiet(monkeypatch):
    from rvepfl.cli import _printer

    _columns(monkeypatch, 100)
    for quiet in (False, True):
        out = FakeStream(tty=True)
        stream = ProgressStream(out)
        _round(_printer(stream, quiet), Clock(), 1, 1, [0, 1])
        stream.clear()
        text = out.getvalue()
        if quiet:
            assert text == ""
        else:
            assert "\r" in text and "0 of 2 clients done" in text and text.endswith("before local training)\n")


@pytest.mark.parametrize("name", ["dlg", "idlg", "ig", "miface"])
def test_an_attack_tells_its_iterations_and_gives_the_same_result(name):
    """The attacks' ``progress`` callback only observes: a tiny linear model on 2x2 images."""
    import torch
    from torch import nn

    from rvepfl.attacks.dlg import dlg, idlg
    from rvepfl.attacks.inverting import inverting_gradients
    from rvepfl.attacks.miface import mi_face
    from rvepfl.attacks.observation import GradientObservation, observed_gradient

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(1, 1, 2, 2), torch.tensor([1])
    obs = GradientObservation(model, observed_gradient(model, x, y), 1, (1, 2, 2), 3, (-3.0, 3.0))
    seen: list[tuple[int, int]] = []

    def run(progress):
        if name == "miface":
            return mi_face(model, 3, (1, 2, 2), max_iter=5, window_length=100, progress=progress).images
        attack = {"dlg": dlg, "idlg": idlg, "ig": inverting_gradients}[name]
        return attack(obs, iterations=4, restarts=2, seed=0, progress=progress).inputs

    assert torch.equal(run(None), run(lambda done, total: seen.append((done, total))))
    if name == "miface":
        assert seen == [(i, 5) for i in range(1, 6)]
    else:
        assert seen == [(i, 8) for i in range(1, 9)]  # counted over both restarts
