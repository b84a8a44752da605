"""``rvepfl compare``: every method x dataset x seed on identical partitions, one table, one plot.

A compare file (TOML) names the methods, data sets and seeds, and a base run config applied to
every run::

    name = "compare-quick"
    methods = ["rvepfl", "fedavg", "fedper", "fedrep"]    # any of `rvepfl methods`
    datasets = ["mnist", "fmnist"]
    seeds = [0, 1]

    [base]                      # any keys of a run config (configs/quick.toml), for every run
    threads = 0
    [base.data]
    subset = 3000
    [base.train]
    rounds = 5

    [dataset_overrides.cifar10.data]   # optional, per data set, e.g. where its files are
    data_dir = "data/cifar-10-batches-py"

    [overrides.dp-sgd.train]    # optional, per method; never data settings
    batch_size = 64

``method``, ``seed``, ``name`` and ``data.dataset`` are set by compare for each run and may not
appear in ``[base]`` or the override tables. The per-method ``[overrides.<method>]`` tables may
not touch ``[data]``: the engine derives a run's partition from its seed and data settings only,
so keeping those equal is what gives every method the same clients for a given data set and seed.

Each run is a normal run directory ``<out>/runs/<dataset>-<method>-seed<k>/``. A finished run
(its ``state/progress.json`` says the last round is complete and its config hash is this file's)
is skipped, an interrupted one resumes from its last complete round, and a directory that holds a
run of another configuration is refused before anything trains. Then ``<out>`` receives, each
file written atomically:

- ``table.csv``: ``dataset, method, seeds, mean_acc, std_acc, acc_seed<k>...``: ``seeds`` is the
  number of seeds; accuracies are fractions in [0, 1] (final-round mean client test accuracy, the
  ``ACC`` column of ``metrics/epoch_testing.csv``); ``std_acc`` is the sample standard deviation
  (ddof = 1), empty with a single seed;
- ``table.md``: one row per method, one column per data set, cells ``mean ± std`` in percent,
  and the margin of RVE-PFL over NbAFL per data set where both ran;
- ``accuracy_<dataset>.png``: mean client test accuracy per round of every method, the mean over
  seeds with the seeds' range shaded;
- ``compare.toml``: the compare file these results came from.
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np

from rvepfl.config import Config, DatasetName, check_name, config_from_dict, config_hash, flatten, read_toml_file
from rvepfl.errors import CheckpointError, ConfigError
from rvepfl.fl.client import prepare
from rvepfl.fl.server import Progress, check_partition
from rvepfl.fl.simulation import initialise, train
from rvepfl.io import atomic_write_bytes, atomic_write_text, remove_temp_files, write_csv
from rvepfl.registry import available_methods, method_class
from rvepfl.rundir import MetricsLog, RunDir

__all__ = [
    "SMOKE_OVERRIDES",
    "CompareReport",
    "CompareSpec",
    "Cell",
    "RunSpec",
    "compare_from_dict",
    "default_out",
    "load_compare",
    "render_markdown",
    "run_compare",
    "summarise",
]

#: What ``--smoke`` sets in every run (equal for all methods, so partitions stay identical).
SMOKE_OVERRIDES: dict[str, dict[str, Any]] = {
    "data": {"subset": 200, "num_clients": 2},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32},
}

_TOP_KEYS = ("name", "methods", "datasets", "seeds", "base", "dataset_overrides", "overrides", "audit")
# `audit` is read by `rvepfl audit` (rvepfl.experiments.audit); compare trains the same runs and ignores it.
_SET_BY_COMPARE = {"name": "`name`", "method": "`methods`", "seed": "`seeds`"}
_DISPLAY = {"rvepfl": "RVE-PFL", "nbafl": "NbAFL"}


@dataclass(frozen=True)
class RunSpec:
    """One run of a comparison: 1-based position, data set, method, seed and its full config."""

    index: int
    dataset: str
    method: str
    seed: int
    cfg: Config

    @property
    def label(self) -> str:
        """The run directory's name, ``<dataset>-<method>-seed<k>``."""
        return f"{self.dataset}-{self.method}-seed{self.seed}"


@dataclass(frozen=True)
class CompareSpec:
    """A validated compare file: its lists, every run's config, and the file's text."""

    name: str
    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: tuple[RunSpec, ...]
    smoke: bool = False
    source: str = ""
    setups: dict[str, Config] = field(default_factory=dict)
    """Per data set, the run config before per-method overrides (what the table's footnote shows)."""
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per method, its overrides as dotted keys (``{"train.batch_size": 64}``)."""


@dataclass(frozen=True)
class Cell:
    """The final accuracies of one method on one data set, one per seed."""

    dataset: str
    method: str
    seeds: tuple[int, ...]
    accs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs))

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof = 1); None with a single seed."""
        return float(np.std(self.accs, ddof=1)) if len(self.accs) >= 2 else None


@dataclass
class CompareReport:
    """What :func:`run_compare` did and wrote."""

    out: Path
    cells: list[Cell]
    markdown: str
    statuses: dict[str, str] = field(default_factory=dict)
    """Run label -> ``trained``, ``resumed`` or ``skipped``."""
    plots: list[Path] = field(default_factory=list)


# -- the compare file ----------------------------------------------------------------------------
def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, tables recursively (neither argument is changed)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _table(values: dict[str, Any], key: str) -> dict[str, Any]:
    value = values.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"Expected `{key}` to be a table [{key}], got {value!r}")
    return value


def _reject_reserved(table: dict[str, Any], where: str, *, data_allowed: bool) -> None:
    for key, source in _SET_BY_COMPARE.items():
        if key in table:
            raise ConfigError(f"`{where}.{key}` is set by the compare file's {source}: remove it")
    data = table.get("data")
    if data is None:
        return
    if not data_allowed:
        raise ConfigError(
            f"`{where}.data` is not allowed: per-method overrides must keep the data settings of every "
            "method equal (same seed, same partition); put data settings in [base.data] or "
            "[dataset_overrides.<dataset>.data]")
    if isinstance(data, dict) and "dataset" in data:
        raise ConfigError(f"`{where}.data.dataset` is set by the compare file's `datasets`: remove it")


def _is_method(name: str) -> bool:
    """Whether ``name`` is a method, a mechanism alone or METHOD+MECHANISM (a composition the
    mechanism cannot make raises its own one-line error)."""
    if "+" not in name:
        return name in available_methods()
    try:
        method_class(name)
    except ConfigError as exc:
        if str(exc).startswith("Unknown"):
            return False
        raise
    return True


def _names(values: dict[str, Any], key: str, allowed: list[str], what: str) -> tuple[str, ...]:
    value = values.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"Expected `{key}` to be a non-empty list of {what} names, got {value!r}")
    for v in value:
        if v not in allowed and not (what == "method" and _is_method(v)):
            raise ConfigError(f"Unknown {what} {v!r} in `{key}`: available: {', '.join(allowed)}"
                              + (" (or METHOD+MECHANISM)" if what == "method" else ""))
    if len(set(value)) != len(value):
        raise ConfigError(f"Expected `{key}` without repeats, got {value!r}")
    return tuple(value)


def _seeds(values: dict[str, Any]) -> tuple[int, ...]:
    value = values.get("seeds")
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ConfigError(f"Expected `seeds` to be a non-empty list of integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"Expected `seeds` without repeats, got {value!r}")
    return tuple(value)


def _build(values: dict[str, Any], where: str) -> Config:
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


def compare_from_dict(values: dict[str, Any], *, smoke: bool = False, source: str = "",
                      default_name: str = "compare") -> CompareSpec:
    """Validate a parsed compare file and build every run's config; raises :class:`ConfigError`."""
    for key in values:
        if key not in _TOP_KEYS:
            raise ConfigError(f"Unknown compare key `{key}`: allowed: {', '.join(_TOP_KEYS)}")
    name = check_name(values.get("name", default_name))
    methods = _names(values, "methods", available_methods(), "method")
    datasets = _names(values, "datasets", list(get_args(DatasetName)), "dataset")
    seeds = _seeds(values)

    base = _table(values, "base")
    _reject_reserved(base, "base", data_allowed=True)
    _build(base, "base")
    per_dataset = _table(values, "dataset_overrides")
    per_method = _table(values, "overrides")
    for table, names, what, data_allowed in ((per_dataset, datasets, "dataset_overrides", True),
                                             (per_method, methods, "overrides", False)):
        for key, value in table.items():
            if key not in names:
                raise ConfigError(f"`[{what}.{key}]` names no entry of `{'datasets' if data_allowed else 'methods'}` "
                                  f"({', '.join(names)})")
            if not isinstance(value, dict):
                raise ConfigError(f"Expected `{what}.{key}` to be a table [{what}.{key}], got {value!r}")
            _reject_reserved(value, f"{what}.{key}", data_allowed=data_allowed)

    smoke_values = SMOKE_OVERRIDES if smoke else {}
    setups: dict[str, Config] = {}
    for dataset in datasets:
        layer = _merge(_merge(base, per_dataset.get(dataset, {})), smoke_values)
        setups[dataset] = _build(_merge(layer, {"data": {"dataset": dataset}}), f"dataset_overrides.{dataset}")
    for method in methods:
        _build(_merge(_merge(base, per_method.get(method, {})), {"method": method}), f"overrides.{method}")

    runs: list[RunSpec] = []
    for dataset in datasets:
        for seed in seeds:
            for method in methods:
                merged = _merge(_merge(base, per_dataset.get(dataset, {})), per_method.get(method, {}))
                label = f"{dataset}-{method}-seed{seed}"
                merged = _merge(_merge(merged, smoke_values),
                                {"name": label, "method": method, "seed": seed, "data": {"dataset": dataset}})
                runs.append(RunSpec(len(runs) + 1, dataset, method, seed, _build(merged, label)))
    smoke_keys = set(flatten(smoke_values))
    shown = {m: {k: v for k, v in flatten(t).items() if k not in smoke_keys} for m, t in per_method.items()}
    return CompareSpec(name, methods, datasets, seeds, tuple(runs), smoke, source, setups,
                       {m: v for m, v in shown.items() if v})


def load_compare(path: str | Path, *, smoke: bool = False) -> CompareSpec:
    """Load and validate a compare file (see the module docstring for its format)."""
    path = Path(path)
    text, values = read_toml_file(path, "compare file")
    try:
        return compare_from_dict(values, smoke=smoke, source=text, default_name=path.stem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def default_out(spec: CompareSpec) -> Path:
    """``runs/<name>``, or ``runs/<name>-smoke`` for a smoke comparison."""
    return Path("runs") / (f"{spec.name}-smoke" if spec.smoke else spec.name)


# -- running -------------------------------------------------------------------------------------
def _state(run: RunDir, cfg: Config) -> str:
    """``new``, ``resume`` or ``complete``; raises if the directory holds something else."""
    if run.unstarted():  # empty, or stopped while being created: nothing trained yet
        return "new"
    if not run.progress.exists():
        raise CheckpointError(f"{run.path} exists but is not an rvepfl run directory (no state/progress.json): "
                              "remove it, or give another --out")
    state = run.read_progress()
    if not run.made_with(cfg):
        raise CheckpointError(
            f"{run.path} holds a run of another configuration (hash {state['config_hash']}, the compare file "
            f"now gives {config_hash(cfg)}): remove it, or give another --out")
    return "complete" if int(state["completed_round"]) >= cfg.train.rounds else "resume"


def _curve(run: RunDir, cfg: Config) -> list[float]:
    """Mean client test accuracy per round (rounds 1..R) of a complete run."""
    rows = MetricsLog.read(run.metrics, cfg.train.rounds).round_means("test")
    if [int(r[0]) for r in rows] != list(range(1, cfg.train.rounds + 1)):
        raise CheckpointError(f"{run.metrics / 'epoch_testing.csv'} lacks rounds of a run marked complete")
    return [float(r[2]) for r in rows]


def run_compare(
    spec: CompareSpec,
    out: str | Path | None = None,
    *,
    progress: Callable[[str], Progress] | None = None,
    log: Callable[[str], None] | None = None,
) -> CompareReport:
    """Train (or resume, or skip) every run of ``spec`` under ``out``, then write the results.

    ``progress(prefix)`` gives the engine's progress receiver for one run (``prefix`` is e.g.
    ``"[3/28] mnist nbafl seed 1"``); ``log`` receives one line per run. Every run directory is
    checked before anything trains, so a conflicting directory fails fast.
    """
    out = Path(out) if out is not None else default_out(spec)
    say = log or (lambda line: None)
    count = len(spec.runs)
    remove_temp_files(out)  # uncommitted writes of a stopped comparison (or audit)
    plan = [(r, RunDir(out / "runs" / r.label)) for r in spec.runs]
    states = {r.label: _state(run, r.cfg) for r, run in plan}

    statuses: dict[str, str] = {}
    curves: dict[str, list[float]] = {}
    for r, run in plan:
        prefix = f"[{r.index}/{count}] {r.dataset} {r.method} seed {r.seed}"
        state = states[r.label]
        if state == "complete":
            say(f"{prefix}: complete, skipped ({run.path})")
            statuses[r.label] = "skipped"
        else:
            started = time.perf_counter()
            fed = prepare(r.cfg)
            if state == "resume":
                check_partition(fed.partition, run)
                done = run.read_progress()["completed_round"]
                say(f"{prefix}: resuming {run.path} after round {done}/{r.cfg.train.rounds}")
                statuses[r.label] = "resumed"
            else:
                initialise(fed, run)
                say(f"{prefix}: training -> {run.path}")
                statuses[r.label] = "trained"
            train(fed, run, progress(prefix) if progress else None)
            del fed
            acc = _curve(run, r.cfg)[-1]
            say(f"{prefix}: final mean client test acc {100 * acc:.2f} % ({time.perf_counter() - started:.0f} s)")
        curves[r.label] = _curve(run, r.cfg)

    cells = summarise(spec, {r.label: curves[r.label][-1] for r in spec.runs})
    out.mkdir(parents=True, exist_ok=True)
    _write_table_csv(out / "table.csv", spec, cells)
    markdown = render_markdown(spec, cells)
    atomic_write_text(out / "table.md", markdown)
    if spec.source:
        atomic_write_text(out / "compare.toml", spec.source)
    plots = [_plot(out / f"accuracy_{d}.png", spec, d, curves) for d in spec.datasets]
    return CompareReport(out, cells, markdown, statuses, plots)


# -- results -------------------------------------------------------------------------------------
def summarise(spec: CompareSpec, final_acc: dict[str, float]) -> list[Cell]:
    """One :class:`Cell` per data set and method, from each run's final accuracy (by run label)."""
    cells = []
    for dataset in spec.datasets:
        for method in spec.methods:
            runs = [r for r in spec.runs if r.dataset == dataset and r.method == method]
            cells.append(Cell(dataset, method, tuple(r.seed for r in runs),
                              tuple(final_acc[r.label] for r in runs)))
    return cells


def _write_table_csv(path: Path, spec: CompareSpec, cells: Iterable[Cell]) -> None:
    header = ["dataset", "method", "seeds", "mean_acc", "std_acc", *(f"acc_seed{s}" for s in spec.seeds)]
    rows = [[c.dataset, c.method, len(c.seeds), c.mean, "" if c.std is None else c.std, *c.accs] for c in cells]
    write_csv(path, header, rows)


def _pct(cell: Cell) -> str:
    text = f"{100 * cell.mean:.1f}"
    return text if cell.std is None else f"{text} ± {100 * cell.std:.1f}"


def _setup(cfg: Config) -> str:
    d, t = cfg.data, cfg.train
    images = f"{d.subset} images" if d.subset else "all images"
    return (f"{d.num_clients} clients, {images} ({d.split} split, {d.partition} partition), rounds {t.rounds}, "
            f"local epochs {t.local_epochs}, batch {t.batch_size}")


def render_markdown(spec: CompareSpec, cells: list[Cell]) -> str:
    """The Markdown table: one row per method, one column per data set, then the margins."""
    by = {(c.dataset, c.method): c for c in cells}
    lines = [
        f"# {spec.name}{' (smoke)' if spec.smoke else ''}: final mean client test accuracy (%)",
        "",
        "| method | " + " | ".join(spec.datasets) + " |",
        "| --- | " + " | ".join("---:" for _ in spec.datasets) + " |",
    ]
    for method in spec.methods:
        lines.append(f"| {method} | " + " | ".join(_pct(by[(d, method)]) for d in spec.datasets) + " |")
    lines.append("")
    seeds = ", ".join(str(s) for s in spec.seeds)
    std = ("mean ± sample standard deviation (ddof = 1) over seeds " + seeds if len(spec.seeds) >= 2
           else f"seed {seeds} (one seed: no standard deviation)")
    lines.append(
        f"Each cell: the final-round mean client test accuracy (`ACC` of `metrics/epoch_testing.csv`), {std}. "
        "For a given data set and seed every method ran on the same clients (same partition).")
    for dataset in spec.datasets:
        lines.append(f"Setup ({dataset}): {_setup(spec.setups[dataset])}.")
    for method, values in spec.method_overrides.items():
        settings = ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in values.items())
        lines.append(f"Overridden for {method}: {settings}.")
    if "rvepfl" in spec.methods and "nbafl" in spec.methods:
        lines.append("")
        for dataset in spec.datasets:
            margin = 100 * (by[(dataset, "rvepfl")].mean - by[(dataset, "nbafl")].mean)
            lines.append(f"{dataset}: {_DISPLAY['rvepfl']} margin over {_DISPLAY['nbafl']}: {margin:+.1f} points")
    lines.append("")
    lines.append("Generated by `rvepfl compare`; do not edit by hand.")
    return "\n".join(lines) + "\n"


def _plot(path: Path, spec: CompareSpec, dataset: str, curves: dict[str, list[float]]) -> Path:
    """Mean client test accuracy per round, per method: the mean over seeds, the range shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method in spec.methods:
        series = [curves[r.label] for r in spec.runs if r.dataset == dataset and r.method == method]
        length = min(len(s) for s in series)
        acc = 100 * np.array([s[:length] for s in series])
        rounds = np.arange(1, length + 1)
        (line,) = ax.plot(rounds, acc.mean(0), marker="o", markersize=3, label=method)
        if len(series) > 1:
            ax.fill_between(rounds, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
    seeds = ", ".join(str(s) for s in spec.seeds)
    band = "; band: range over seeds" if len(spec.seeds) > 1 else ""
    ax.set_title(f"{spec.name}: {dataset} (mean over seeds {seeds}{band})", fontsize=10)
    ax.set_xlabel("round")
    ax.set_ylabel("mean client test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    max_round = max(len(c) for c in curves.values())
    if max_round <= 20:
        ax.set_xticks(range(1, max_round + 1))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
    return path
