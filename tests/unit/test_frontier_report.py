"""The frontier's report: the upper concave hull, the verdict (values, positions, pairing, precision), the files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from rvepfl.experiments.frontier_report import (
    COMPARED,
    NO_SURFACE,
    NOT_REACHABLE,
    OTHER_NO_SURFACE,
    OUTSIDE,
    SINGLE_POINT,
    VERDICT_COLUMNS,
    FrontierPoint,
    Panel,
    compare_at_equal_success,
    envelope_accuracy,
    estimate_points,
    frontier_columns,
    frontier_markdown,
    frontier_rows,
    verdict_rows,
    write_frontier,
)
from rvepfl.experiments.stats import AucSample, MeanSample, SeedDraw

MI = Panel("miface-released", "MI-Face, released model", "classes recognised (%)")
MIA = Panel("mia-stolen", "Membership inference (LiRA), stolen model", "ROC AUC")
SEEDS = (0, 1, 2)


def flat(values, n: int = 10) -> tuple[MeanSample, ...]:
    """One sample per seed whose units all equal that seed's value: a zero-width interval per seed."""
    return tuple(MeanSample(np.full(n, v)) for v in values)


def point(method, value, acc, success, *, dataset="toy", knob="k", mia=None) -> FrontierPoint:
    """A point whose accuracy and MI-Face success are the same in every seed (exact numbers)."""
    return FrontierPoint(dataset, method, None if value is None else knob, value, SEEDS,
                         flat([acc] * 3), {MI.key: None if success is None else flat([success] * 3), MIA.key: mia})


# The hand-made curve: success 10, 20, 30, 40 % at accuracy 50, 70, 60, 80 %; (30, 60) is dominated.
CURVE = [point("nbafl", 1.0, 0.5, 0.1), point("nbafl", 2.0, 0.7, 0.2),
         point("nbafl", 3.0, 0.6, 0.3), point("nbafl", 4.0, 0.8, 0.4)]
DRAW = SeedDraw(3, boot=200)


def verdict(points, panels=(MI,), against=("nbafl",)):
    return compare_at_equal_success(estimate_points(points, panels, DRAW), panels, against=against)


# -- the envelope --------------------------------------------------------------------------------
def test_envelope_drops_dominated_points_and_interpolates_between_the_rest():
    s, a = np.array([10.0, 20.0, 30.0, 40.0]), np.array([50.0, 70.0, 60.0, 80.0])
    got = [float(envelope_accuracy(s, a, x)) for x in (10.0, 15.0, 20.0, 30.0, 35.0, 40.0, 55.0)]
    assert got == pytest.approx([50.0, 60.0, 70.0, 75.0, 77.5, 80.0, 80.0])
    # a plain interpolation through the points would give 60 at 30: the dominated point is not the method's best
    assert float(envelope_accuracy(s[[3, 1, 0, 2]], a[[3, 1, 0, 2]], 30.0)) == pytest.approx(75.0)  # any order


def test_envelope_at_equal_success_keeps_the_more_accurate_point_and_works_row_wise():
    assert float(envelope_accuracy(np.array([10.0, 10.0, 20.0]), np.array([40.0, 60.0, 80.0]), 15.0)) == 70.0
    rows = envelope_accuracy(np.array([[0.0, 10.0], [0.0, 20.0]]), np.array([[0.0, 10.0], [0.0, 10.0]]),
                             np.array([5.0, 5.0]))
    assert rows == pytest.approx([5.0, 2.5])


def test_envelope_is_the_upper_concave_hull_not_the_line_through_neighbours():
    # (20, 55) is dominated by nothing, but lies below the chord from (10, 50) to (30, 80): alternating
    # those two settings reaches 65 at success 20, so the point is skipped.
    s, a = np.array([10.0, 20.0, 30.0]), np.array([50.0, 55.0, 80.0])
    got = [float(envelope_accuracy(s, a, x)) for x in (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0)]
    assert got == pytest.approx([50.0, 50.0, 57.5, 65.0, 72.5, 80.0, 80.0])
    straight = float(np.interp(20.0, s, a))  # the straight-line envelope through the non-dominated points
    assert straight == 55.0 < got[3]


def test_the_verdict_uses_the_hull():
    curve = [point("nbafl", 1.0, 0.50, 0.1), point("nbafl", 2.0, 0.55, 0.2), point("nbafl", 3.0, 0.80, 0.3)]
    [c] = verdict([*curve, point("rvepfl", 0.0, 0.60, 0.2)])
    assert c.delta.mean == pytest.approx(-5.0)  # 60 against the hull's 65, not +5 against the point's 55
    assert c.reading == "less accurate"


# -- the verdict ---------------------------------------------------------------------------------
def test_verdict_on_the_hand_made_curve():
    refs = [point("rvepfl", 0.0, 0.80, 0.25), point("rvepfl", 0.5, 0.60, 0.30), point("rvepfl", 1.0, 0.74, 0.30),
            point("rvepfl", 2.0, 0.90, 0.05), point("rvepfl", 3.0, 0.85, 0.60), point("rvepfl", 4.0, 0.55, 0.10)]
    got = {c.value: c for c in verdict([*CURVE, *refs])}
    assert [got[v].status for v in (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)] == [
        COMPARED, COMPARED, COMPARED, NOT_REACHABLE, OUTSIDE, COMPARED]
    for value, delta in ((0.0, 7.5), (0.5, -15.0), (1.0, -1.0), (3.0, 5.0), (4.0, 5.0)):
        d = got[value].delta
        assert (d.mean, d.low, d.high) == pytest.approx((delta, delta, delta))  # replicate-wise, same number
    assert got[2.0].delta is None and got[2.0].reading == ""
    assert "never gets as private" in got[2.0].sentence and "not reachable" in got[2.0].sentence
    assert got[0.0].reading == "more accurate"
    assert got[0.0].sentence == ("RVE-PFL (k = 0) is 7.5 points [7.5, 7.5] more accurate than NbAFL at equal "
                                 "MI-Face, released model success (25.0 %).")
    assert got[0.5].sentence.startswith("RVE-PFL (k = 0.5) is 15.0 points [15.0, 15.0] less accurate than NbAFL")
    assert "leaks more than every NbAFL point" in got[3.0].sentence and "NbAFL (k = 4)" in got[3.0].sentence
    assert got[0.0].position_uncertain is False and got[0.0].half_width == 0.0 and got[0.0].powered
    assert got[2.0].position_uncertain is False and got[2.0].powered is None and got[2.0].half_width is None
    assert all(c.wide_success == () for c in got.values())  # every success exact: nothing wide


def test_verdict_with_noise_no_difference_when_the_interval_contains_zero():
    rng = np.random.default_rng(0)
    noisy = FrontierPoint("toy", "rvepfl", "k", 0.0, SEEDS, tuple(MeanSample(rng.normal(0.72, 0.2, 8)) for _ in SEEDS),
                          {MI.key: tuple(MeanSample((rng.random(30) < 0.25).astype(float)) for _ in SEEDS),
                           MIA.key: None})
    [c] = verdict([*CURVE, noisy])
    assert c.status == COMPARED and c.delta.low < 0 < c.delta.high
    assert c.reading == "no significant difference"
    assert "not significantly different from NbAFL" in c.sentence and "the interval contains 0" in c.sentence
    assert c.half_width == pytest.approx((c.delta.high - c.delta.low) / 2) and c.powered is (c.half_width <= 10)


def test_verdict_is_paired_by_seed():
    # Seeds differ by 20 points in both methods; RVE-PFL is 5 points above NbAFL's point in every seed.
    other = [FrontierPoint("toy", "nbafl", "k", 1.0, SEEDS, flat([0.50, 0.60, 0.70]), {MI.key: flat([0.2] * 3)}),
             FrontierPoint("toy", "nbafl", "k", 2.0, SEEDS, flat([0.70, 0.80, 0.90]), {MI.key: flat([0.6] * 3)})]
    ref = FrontierPoint("toy", "rvepfl", "k", 0.0, SEEDS, flat([0.55, 0.65, 0.75]), {MI.key: flat([0.2] * 3)})
    estimates = estimate_points([*other, ref], [MI], DRAW)
    assert estimates[-1].accuracy.high - estimates[-1].accuracy.low > 10  # alone: wide
    [c] = compare_at_equal_success(estimates, [MI], against=("nbafl",))
    assert (c.delta.mean, c.delta.low, c.delta.high) == pytest.approx((5.0, 5.0, 5.0))


def test_verdict_without_a_surface_or_a_curve():
    ref = point("rvepfl", 0.0, 0.8, None)
    assert [c.status for c in verdict([*CURVE, ref])] == [NO_SURFACE]
    assert "RVE-PFL exposes no surface to MI-Face" in verdict([*CURVE, ref])[0].sentence
    blind = [point("dp-sgd", 1.0, 0.5, None), point("dp-sgd", 2.0, 0.6, None)]
    lone = [point("dp-fedavg", 1.0, 0.5, 0.1)]
    fixed = [point("fedavg", None, 0.9, 0.8)]
    got = verdict([*blind, *lone, *fixed, point("rvepfl", 0.0, 0.8, 0.2)], against=("dp-sgd", "dp-fedavg", "fedavg"))
    assert [(c.other, c.status) for c in got] == [("dp-sgd", OTHER_NO_SURFACE), ("dp-fedavg", SINGLE_POINT),
                                                  ("fedavg", SINGLE_POINT)]
    assert all(c.delta is None for c in got)


def test_without_a_method_to_compare_with_the_verdict_says_so_in_one_line():
    points = [*CURVE, point("fedavg", None, 0.9, 0.8)]  # nbafl alone is swept: it is the reference
    estimates = estimate_points(points, [MI], DRAW)
    text = frontier_markdown(estimates, [MI], compare_at_equal_success(estimates, [MI], reference="nbafl", against=()),
                             DRAW, reference="nbafl", against=())
    verdict_part = text.split("### Verdict")[1].split("## How the numbers")[0]
    assert "No swept method to compare NbAFL with (`frontier.against` is empty): no verdict." in verdict_part
    assert "**MI-Face" not in verdict_part  # no panel heading with nothing under it


def test_every_verdict_line_says_whether_it_is_precise_and_flags_wide_success_cells():
    one_in_ten = tuple(MeanSample(np.array([1.0] + [0.0] * 9)) for _ in SEEDS)  # 3 of 30: exact [2.1, 26.5]
    shares = FrontierPoint("toy", "rvepfl", "k", 0.0, SEEDS, flat([0.8] * 3), {MI.key: one_in_ten, MIA.key: None})
    wide = FrontierPoint("toy", "rvepfl", "k", 0.5, SEEDS, tuple(MeanSample(np.full(10, v)) for v in (0.5, 0.7, 0.9)),
                         {MI.key: flat([0.25] * 3), MIA.key: None})
    private = point("rvepfl", 1.0, 0.9, 0.05)
    points = [*CURVE, shares, wide, private]
    estimates = estimate_points(points, [MI], DRAW)
    got = {c.value: c for c in compare_at_equal_success(estimates, [MI], against=("nbafl",))}
    assert got[0.0].delta.mean == pytest.approx(30.0) and got[0.0].powered  # every seed alike: exact
    assert got[0.0].wide_success == ("RVE-PFL (k = 0) 10.0 % [2.1, 26.5]",)  # NbAFL (k = 1) is exact: not flagged
    assert got[0.0].position_uncertain  # its success interval reaches below NbAFL's most private point
    assert got[0.5].half_width > 10 and got[0.5].powered is False
    assert got[1.0].status == NOT_REACHABLE and got[1.0].powered is None
    text = frontier_markdown(estimates, [MI], list(got.values()), DRAW, against=("nbafl",))
    lines = [line for line in text.splitlines() if line.startswith(("- RVE-PFL", "- NbAFL"))]
    assert len(lines) == 3
    assert lines[0].endswith("Interval ±0.0 points, within ±10. Attack-success intervals wider than ±10 points "
                             "under it: RVE-PFL (k = 0) 10.0 % [2.1, 26.5].")
    assert "reaches outside NbAFL's measured range" in lines[0]
    assert f"Interval ±{got[0.5].half_width:.1f} points: more seeds needed." in lines[1]
    assert lines[2].endswith("No interval: not reachable.")
    assert "- Against NbAFL: more accurate at 1 of 3 points" in text and "; 1 of 3 within ±10 points." in text
    assert "Student's t over its\n  3 seeds' statistics" in text and "0 of 6 reads [0.0, 45.9 %]" in text
    assert "upper concave hull" in text
    rows = verdict_rows(list(got.values()))
    assert [r[VERDICT_COLUMNS.index("powered")] for r in rows] == [True, False, None]
    assert rows[0][VERDICT_COLUMNS.index("wide_success")] == "RVE-PFL (k = 0) 10.0 % [2.1, 26.5]"


def test_one_seed_is_labelled_within_seed_only():
    draw = SeedDraw(1, boot=200)
    rng = np.random.default_rng(6)

    def one(method, value, acc, success):
        return FrontierPoint("toy", method, "k", value, (0,), (MeanSample(rng.normal(acc, 0.05, 10)),),
                             {MI.key: (MeanSample((rng.random(40) < success).astype(float)),)})

    points = [one("nbafl", 1.0, 0.5, 0.1), one("nbafl", 2.0, 0.8, 0.6), one("rvepfl", 0.0, 0.7, 0.3)]
    estimates = estimate_points(points, [MI], draw)
    comparisons = compare_at_equal_success(estimates, [MI], against=("nbafl",))
    assert all(e.accuracy.within_seed_only for e in estimates)
    text = frontier_markdown(estimates, [MI], comparisons, draw, against=("nbafl",))
    assert "Seed 0; [95 % interval, within this one seed only]." in text
    assert "**within one seed only.**" in text and "(within one seed only)" in text


def test_auc_panels_keep_the_auc_and_mark_chance_in_the_table():
    rng = np.random.default_rng(1)
    mia = tuple(AucSample(rng.normal(0.5, 1, 50), rng.normal(0, 1, 50)) for _ in SEEDS)
    [row] = frontier_rows([point("fedavg", None, 0.9, 0.8, mia=mia)], [MI, MIA], DRAW)
    assert 0.5 < row["mia-stolen_mean"] < 1.0 and row["mia-stolen_low"] < row["mia-stolen_mean"]
    assert row["miface-released_mean"] == pytest.approx(80.0) and row["accuracy_mean"] == pytest.approx(90.0)
    assert row["seeds"] == "0 1 2" and row["knob"] is None and row["note"] == ""


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match="same seeds"):
        estimate_points([CURVE[0], FrontierPoint("toy", "x", None, None, (0, 1, 5), flat([1, 1, 1]),
                                                 {MI.key: None})], [MI], DRAW)
    with pytest.raises(ValueError, match="lacks"):
        estimate_points([FrontierPoint("toy", "x", None, None, SEEDS, flat([1, 1, 1]), {})], [MI], DRAW)
    with pytest.raises(ValueError, match="twice"):
        estimate_points([CURVE[0], CURVE[0]], [MI], DRAW)
    with pytest.raises(ValueError, match="both None"):
        FrontierPoint("toy", "x", "k", None, SEEDS, flat([1, 1, 1]), {})
    with pytest.raises(ValueError, match="one accuracy sample per seed"):
        FrontierPoint("toy", "x", None, None, SEEDS, flat([1, 1]), {})


# -- the files -----------------------------------------------------------------------------------
def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_write_frontier_writes_every_data_set(tmp_path):
    rng = np.random.default_rng(2)

    def noisy(dataset, method, value, acc, success, mia=True):
        return FrontierPoint(
            dataset, method, None if value is None else f"{method}.knob", value, SEEDS,
            tuple(MeanSample(np.clip(rng.normal(acc, 0.05, 10), 0, 1)) for _ in SEEDS),
            {MI.key: None if success is None else
             tuple(MeanSample((rng.random(10) < success).astype(float)) for _ in SEEDS),
             MIA.key: tuple(AucSample(rng.normal(success or 0, 1, 40), rng.normal(0, 1, 40)) for _ in SEEDS)
             if mia else None})

    points = []
    for dataset in ("mnist", "fmnist"):
        points += [noisy(dataset, "nbafl", e, a, s)
                   for e, a, s in ((1.0, 0.5, 0.1), (10.0, 0.8, 0.5), (60.0, 0.9, 0.8))]
        points += [noisy(dataset, "rvepfl", b, a, s, mia=False) for b, a, s in ((0.0, 0.88, 0.1), (0.01, 0.85, 0.05))]
        points += [noisy(dataset, "fedavg", None, 0.92, 0.9), noisy(dataset, "fedper", None, 0.9, None)]
    paths = write_frontier(tmp_path, points, [MI, MIA], SeedDraw(3, boot=300))
    assert [p.name for p in paths] == ["frontier.csv", "frontier_verdict.csv", "frontier.md",
                                       "frontier_mnist.png", "frontier_fmnist.png"]
    rows = read(tmp_path / "frontier.csv")
    assert list(rows[0]) == frontier_columns([MI, MIA])
    assert [(r["dataset"], r["method"], r["value"]) for r in rows[:4]] == [
        ("mnist", "nbafl", "1.0"), ("mnist", "nbafl", "10.0"), ("mnist", "nbafl", "60.0"), ("mnist", "rvepfl", "0.0")]
    assert len(rows) == 14 and {r["dataset"] for r in rows} == {"mnist", "fmnist"}
    fedper = next(r for r in rows if r["method"] == "fedper")
    assert fedper["miface-released_mean"] == "" and fedper["note"] == "no surface: miface-released"
    for r in rows:
        assert float(r["accuracy_low"]) <= float(r["accuracy_high"])
    verdict = read(tmp_path / "frontier_verdict.csv")
    assert list(verdict[0]) == VERDICT_COLUMNS
    assert len(verdict) == 2 * 2 * 2  # data sets x panels x RVE-PFL points (NbAFL only; the rest absent)
    assert {r["status"] for r in verdict if r["panel"] == MIA.key} == {NO_SURFACE}
    for r in verdict:  # powered exactly where the half-width is at most 10 points; empty without a delta
        if r["delta_mean"]:
            assert r["powered"] == str(float(r["half_width"]) <= 10.0)
        else:
            assert r["powered"] == r["half_width"] == ""
    text = (tmp_path / "frontier.md").read_text()
    assert text.count("## mnist") == 1 and text.count("## fmnist") == 1
    assert "| NbAFL | knob = 10 |" in text and "n/a" in text
    assert "Not in this frontier: DP-FedAvg, DP-SGD, RVE-PFL+NbAFL." in text
    assert "RVE-PFL exposes no surface to Membership inference" in text
    assert "- Against NbAFL:" in text
    for name in ("frontier_mnist.png", "frontier_fmnist.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = frontier_rows(points, [MI, MIA], SeedDraw(3, boot=300))  # deterministic: the same numbers
    assert [{k: str("" if v is None else v) for k, v in r.items()} for r in again] == rows
