"""The ``rvepfl`` command line.

Errors a user can cause are printed as one line on stderr (``error: ...``) with exit code 2;
nothing is written before the configuration and the data have been validated.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperGroup

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from rvepfl import __version__
from rvepfl.config import (
    Config,
    apply_overrides,
    dumps_config,
    load_config,
    published_warnings,
)
from rvepfl.errors import CheckpointError, ConfigError, RvepflError
from rvepfl.io import atomic_write_text
from rvepfl.perf import ATTACK_THREADS, attack_threads, tune_allocator
from rvepfl.progress import ProgressPrinter, ProgressStream

if TYPE_CHECKING:
    from rvepfl.experiments.runner import SuiteReport
    from rvepfl.experiments.spec import Suite
    from rvepfl.fl.client import Federation
    from rvepfl.methods import Method


def _plain_help_extras() -> None:
    """typer < 0.21 (the range flwr 1.41 allows) escapes the ``[default: ...]`` and ``[required]``
    of option help for rich markup even when markup is off, so ``--help`` showed ``\\[default: 1]``;
    with markup off (``rich_markup_mode=None``, below) the text is shown as it is."""
    try:
        from typer import rich_utils
    except ImportError:  # typer without rich: nothing is escaped
        return
    if hasattr(rich_utils, "escape_before_html_export"):
        rich_utils.escape_before_html_export = lambda text: text.strip()  # type: ignore[assignment]  # same call


_plain_help_extras()

COMMAND_ORDER = ("train", "compare", "attack", "audit", "frontier", "flower-local", "flower-app", "show", "methods",
                 "attacks")
"""The order of ``rvepfl --help``'s commands, as a user meets them: training, comparing and
attacking in-process, then Flower's deployments, then the utilities."""


class _Commands(TyperGroup):
    """The command group: its commands listed in :data:`COMMAND_ORDER` (any other after them),
    each with the whole first sentence of its help, which click would cut to the terminal."""

    def list_commands(self, ctx: Any) -> list[str]:
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1 << 16)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="rvepfl",
    cls=_Commands,
    help="Personalised federated learning that resists model-inversion attacks (RVE-PFL).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"rvepfl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Personalised federated learning that resists model-inversion attacks (RVE-PFL)."""


_BUILT_IN = load_config(None)
"""What `rvepfl train` runs without --config: the built-in config, configs/quick.toml's values."""


def _default(help_: str, value: object) -> str:
    """``help_`` ending in ``[default: value]``, as typer writes a default value (a default given
    as text, typer's ``show_default="..."``, comes out in parentheses: ``[default: (7)]``)."""
    return f"{help_}  [default: {value}]"


def _built_in(help_: str, key: str) -> str:
    """The help of a `train` flag that overrides config key ``key``: its built-in value."""
    value: Any = _BUILT_IN
    for part in key.split("."):
        value = getattr(value, part)
    return _default(help_, value)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
#: Config keys a resumed run may change: they are outside the config hash (speed, devices, what
#: a client failure does and the TensorBoard events), so the run's numbers stay those of its config.
RESUMABLE_KEYS = frozenset({"threads", "workers", "device", "tensorboard", "train.eval_batch_size",
                            "faults.min_clients", "faults.client_timeout"})


def _printer(stream: ProgressStream, quiet: bool, prefix: str = "") -> ProgressPrinter:
    """Progress lines on ``stream`` (stderr), with a live line on a terminal (none with --quiet)."""
    if quiet:
        return ProgressPrinter(lambda text: None, prefix)
    return ProgressPrinter(stream.line, prefix, live=stream.live)


def _prefixed(stream: ProgressStream, quiet: bool) -> Any:
    """Progress of each run of a comparison, its lines prefixed with the run's label."""
    return lambda prefix: _printer(stream, quiet, prefix)


def _print_table(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from rvepfl.rundir import MetricsLog, RunDir

    run = RunDir(run_dir)
    done = int(run.read_progress()["completed_round"])
    log = MetricsLog.read(run.metrics, done)
    general = {row[0]: row for row in log.round_means("general")}
    seconds = {row[0]: row[1] for row in log.rows["round_timing.csv"]}
    table = Table(title="Mean client test metrics per round (after local training)")
    for col in ("Round", "Test loss", "Test acc", "Precision", "Recall", "F1", "Acc before local training", "Seconds"):
        table.add_column(col, justify="right")
    for row in log.round_means("test"):
        r = row[0]
        table.add_row(str(r), f"{row[1]:.4f}", f"{100 * row[2]:.2f} %", f"{row[3]:.4f}",
                      f"{row[4]:.4f}", f"{row[5]:.4f}",
                      f"{100 * general[r][2]:.2f} %" if r in general else "–",  # a row lost from a CSV
                      f"{seconds[r]:.1f}" if r in seconds else "–")
    console = Console(width=max(100, Console().width))
    console.print(table)


def _parse_sets(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; the value is read as TOML (``3``, ``2e-3``, ``true``, ``"iid"``) or,
    failing that, as a bare string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Expected --set KEY=VALUE (e.g. --set train.lr=2e-3), got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except (ValueError, RecursionError):  # TOMLDecodeError, or an int or nesting too large to read
            value = raw.strip()
        out[key.strip()] = value
    return out


def _fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option(help=_default("TOML config file.", "the built-in config (configs/quick.toml)"))] = None,
    method: Annotated[Optional[str], typer.Option(help=_built_in("Method, e.g. rvepfl, fedavg, nbafl or rvepfl+nbafl (see `rvepfl methods`).", "method"))] = None,
    dataset: Annotated[Optional[str], typer.Option(help=_built_in("mnist, fmnist or cifar10.", "data.dataset"))] = None,
    data_dir: Annotated[Optional[str], typer.Option(help=_default("Directory with the full data set's files.", "the bundled subset"))] = None,
    download: Annotated[Optional[bool], typer.Option("--download", help="Download the full data set into --data-dir if missing (needs internet).")] = None,
    clients: Annotated[Optional[int], typer.Option(help=_built_in("Number of clients.", "data.num_clients"))] = None,
    subset: Annotated[Optional[int], typer.Option(help=_built_in("Use only this many images (stratified, seeded; 0: all).", "data.subset"))] = None,
    rounds: Annotated[Optional[int], typer.Option(help=_built_in("Communication rounds.", "train.rounds"))] = None,
    local_epochs: Annotated[Optional[int], typer.Option(help=_built_in("Local epochs per round.", "train.local_epochs"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=_built_in("Local batch size.", "train.batch_size"))] = None,
    partition: Annotated[Optional[str], typer.Option(help=_built_in("iid, shards or dirichlet.", "data.partition"))] = None,
    split: Annotated[Optional[str], typer.Option(help=_built_in("combined (published) or standard.", "data.split"))] = None,
    client_fraction: Annotated[Optional[float], typer.Option(help=_built_in("Share of clients per round.", "train.client_fraction"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=_built_in("Master seed.", "seed"))] = None,
    threads: Annotated[Optional[int], typer.Option(help=_built_in("Torch CPU threads (0: default); per worker with --workers.", "threads"))] = None,
    workers: Annotated[Optional[int], typer.Option(help=_built_in("Processes that train a round's clients side by side (0: one per CPU; 1: all in this process).", "workers"))] = None,
    device: Annotated[Optional[str], typer.Option(help=_built_in("cpu, cuda or auto.", "device"))] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any config key, e.g. --set train.lr=2e-3 (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option(help=_default("Run directory.", "runs/<config name>-<time>"))] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory from its last complete round.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines.")] = False,
    tensorboard: Annotated[Optional[bool], typer.Option("--tensorboard", help="Also write TensorBoard events to RUN/tensorboard (pip install 'rvepfl[tensorboard]').")] = None,
) -> None:
    """Train a federation in-process and write a run directory.

    A setting not given as an option comes from --config; the defaults shown are the built-in
    config's (configs/quick.toml). At the end the run's accuracy plot is written too.
    """
    from rvepfl.fl.client import prepare
    from rvepfl.fl.lifecycle import open_run
    from rvepfl.fl.secure_aggregation import round_shares
    from rvepfl.fl.simulation import begin_run, keep_precision
    from rvepfl.fl.simulation import train as run_training
    from rvepfl.rundir import RunDir
    from rvepfl.tensorboard import check_tensorboard

    flags: dict[str, Any] = {
        "method": method, "seed": seed, "threads": threads, "workers": workers, "device": device,
        "tensorboard": tensorboard,
        "data.dataset": dataset, "data.data_dir": data_dir, "data.download": download,
        "data.num_clients": clients, "data.subset": subset, "data.partition": partition, "data.split": split,
        "train.rounds": rounds, "train.local_epochs": local_epochs, "train.batch_size": batch_size,
        "train.client_fraction": client_fraction,
    }
    # A flag that was not given must not erase the same key given with --set.
    sets = _parse_sets(set_ or [])
    overrides = {**sets, **{k: v for k, v in flags.items() if v is not None}}
    if resume is not None:
        def given_as(key: str) -> str:  # how the command line gave ``key``: its option, or --set
            if flags.get(key) is None:
                return f"--set {key}={sets[key]}"
            return "--clients" if key == "data.num_clients" else "--" + key.split(".")[-1].replace("_", "-")

        given = [given_as(k) for k in overrides if k not in RESUMABLE_KEYS]
        given += (["--config"] if config else []) + (["--out"] if out else [])
        if given:
            _fail(f"--resume continues a run with its own config: drop {', '.join(given)} "
                  f"(only {', '.join(sorted(RESUMABLE_KEYS))} may change on resume)")
        run = RunDir(resume)
        if not run.config.is_file():
            _fail(f"{resume} is not an rvepfl run directory (no config.toml)")
        saved = load_config(run.config)
        cfg = apply_overrides(saved, overrides)
        check_tensorboard(cfg, run.path)
        # A directory stopped while being created (no progress marker yet) is created again.
        start = open_run(run, cfg, saved=saved, another=lambda run, recorded, chash: CheckpointError(
            f"{run.config} was edited after the run started: its hash no longer matches state/progress.json"))
        fed = prepare(cfg)
        begin_run(fed, start)
        if start.status == "new":
            typer.echo(f"starting {run.path} again from its config.toml: it was stopped while being created", err=True)
        else:
            keep_precision(fed, run)
            if cfg != saved:  # speed or fault settings changed: config.toml says what runs from now on
                atomic_write_text(run.config, dumps_config(cfg))
            typer.echo(f"resuming {run.path} after round {start.done}/{cfg.train.rounds}", err=True)
    else:
        cfg = apply_overrides(load_config(config), overrides)
        fed = prepare(cfg)  # validates the data before anything is written
        path = out or Path("runs") / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if path.exists() and any(path.iterdir()):
            _fail(f"run directory {path} already exists: continue it with --resume {path}, or choose another --out")
        check_tensorboard(cfg, path)
        start = open_run(RunDir(path), cfg)  # new: the directory is empty
        run = start.run
        begin_run(fed, start)
        typer.echo(
            f"training {cfg.method} on {fed.dataset.source}: {cfg.data.num_clients} clients, "
            f"{cfg.train.rounds} rounds, {cfg.train.local_epochs} local epochs, batch {cfg.train.batch_size}, "
            f"seed {cfg.seed} -> {run.path}", err=True)
    _warn_published(cfg)
    _say_precision(fed)
    if cfg.secure_aggregation.enabled:
        shares, threshold = round_shares(cfg, cfg.clients_per_round)
        typer.echo(f"secure aggregation: each round's mean is SecAgg+'s quantised mean ({shares} shares, threshold "
                   f"{threshold}), computed in the clear in-process; `rvepfl flower-local` runs the protocol", err=True)
    started = time.perf_counter()
    stream = ProgressStream()
    try:
        summary = run_training(fed, run, _printer(stream, quiet), start=start)
    except KeyboardInterrupt:
        stream.clear()
        typer.echo(f"\ninterrupted: continue with `rvepfl train --resume {run.path}`", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        stream.clear()
    _print_table(run.path)
    plot = _accuracy_plot(run.path)
    final = summary["final"]["test"]
    typer.echo(
        f"final mean client test accuracy {100 * final['acc']:.2f} % after round {final['round']} "
        f"({time.perf_counter() - started:.0f} s)"
    )
    typer.echo(f"accuracy plot: {plot}")
    typer.echo(f"run directory: {run.path}")
    _warn_published(cfg)


def _say_precision(fed: Federation) -> None:
    """A line when the run trains in a mixed precision: which, and why (a warning where it is emulated)."""
    p = fed.method.precision
    if p.mixed:
        typer.secho(f"{'WARNING: ' if p.emulated else ''}precision {p.name}: {p.reason}", err=True,
                    fg=typer.colors.YELLOW if p.emulated else None)


def _warn_published(cfg: Config) -> None:
    """A warning line per published defect the run turns on on purpose (``published_warnings``)."""
    for line in published_warnings(cfg):
        typer.secho(f"WARNING: {line}", err=True, fg=typer.colors.YELLOW)


def _accuracy_plot(run_dir: Path) -> Path:
    """Write RUN/accuracy.png from the run's metrics CSVs; return its path."""
    from rvepfl.figures import run_accuracy_plot

    return run_accuracy_plot(run_dir)


def _flower_config(config: Optional[Path], set_: Optional[list[str]]) -> Config:
    from rvepfl.flower import require_flwr
    from rvepfl.flower.appconfig import check_flower_config

    require_flwr()
    return check_flower_config(apply_overrides(load_config(config), _parse_sets(set_ or [])))


@app.command("flower-app")
def flower_app(
    out: Annotated[Path, typer.Option(help="The Flower app directory to write (its pyproject.toml).")],
    run_dir: Annotated[Path, typer.Option(help="The run directory on the SuperLink's machine (server.out).")],
    config: Annotated[Optional[Path], typer.Option(help=_default("TOML config file.", "the built-in config (configs/quick.toml)"))] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any config key, e.g. --set train.rounds=3 (repeatable).")] = None,
    wait_nodes: Annotated[float, typer.Option(help="Seconds the server waits for every client's SuperNode.")] = 120.0,
) -> None:
    """Write a Flower app directory for a deployment.

    The directory holds a config's app, to run with `flwr run DIR CONNECTION` on a deployment.
    """
    from rvepfl.flower.appconfig import write_app

    cfg = _flower_config(config, set_)
    if wait_nodes <= 0:
        raise ConfigError(f"Expected --wait-nodes > 0, got {wait_nodes}")
    path = write_app(out, cfg, out=run_dir.absolute(), wait_nodes=wait_nodes)
    typer.echo(f"Flower app: {path / 'pyproject.toml'} ({cfg.data.num_clients} SuperNodes needed, "
               f"partition-id 0..{cfg.data.num_clients - 1}); run: flwr run {path} CONNECTION --stream")


@app.command("flower-local")
def flower_local(
    out: Annotated[Path, typer.Option(help="Run directory (written by the ServerApp; continued if it holds a stopped run of the same config).")],
    config: Annotated[Optional[Path], typer.Option(help=_default("TOML config file.", "the built-in config (configs/quick.toml)"))] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any config key, e.g. --set train.rounds=3 (repeatable).")] = None,
    nodes: Annotated[Optional[int], typer.Option(help=_default("SuperNodes to start (one per client: must equal data.num_clients).", "data.num_clients"))] = None,
    tls: Annotated[bool, typer.Option("--tls", help="TLS with a fresh self-signed CA instead of --insecure on loopback.")] = False,
    auth: Annotated[bool, typer.Option("--auth", help="SuperNode authentication: the SuperLink accepts only the nodes whose fresh keys it registered (implies --tls).")] = False,
    threads: Annotated[int, typer.Option(help="Torch threads of each ClientApp.")] = 1,
    timeout: Annotated[Optional[float], typer.Option(help=_default("Stop everything after this many seconds.", "no limit"))] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines.")] = False,
) -> None:
    """Run a config on Flower's Deployment Engine on this machine.

    A SuperLink and one SuperNode per client on 127.0.0.1, each its own process group, `flwr run`
    streaming the ServerApp's log; every process is stopped at the end, on error or on Ctrl-C.
    """
    import json

    from rvepfl.fl.client import prepare
    from rvepfl.flower.appconfig import write_app
    from rvepfl.flower.local import LocalFederation
    from rvepfl.tensorboard import check_tensorboard

    cfg = _flower_config(config, set_)
    n = cfg.data.num_clients
    if nodes is not None and nodes != n:
        raise ConfigError(f"Expected --nodes to equal data.num_clients = {n} (one SuperNode per client), got {nodes}")
    if threads < 1:
        raise ConfigError(f"Expected --threads >= 1, got {threads}")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"Expected --timeout > 0 seconds, got {timeout}")
    run_dir = out.absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{out} is not a directory")
    resuming = (run_dir / "state" / "progress.json").exists()
    if not resuming and run_dir.exists() and any(p.name != "flower" for p in run_dir.iterdir()):
        _fail(f"run directory {out} already exists and holds no run: choose another --out")
    prepare(cfg)  # the data and partition, validated before any process starts
    check_tensorboard(cfg, run_dir)
    work = run_dir / "flower"
    app_dir = write_app(work / "app", cfg, out=run_dir)
    say = (lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))
    typer.echo(f"{'continuing' if resuming else 'training'} {cfg.method} on Flower: {n} SuperNodes on 127.0.0.1, "
               f"{cfg.train.rounds} rounds -> {run_dir} (logs in {work / 'local' / 'logs'})", err=True)
    status = work / "status.json"
    status.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        with LocalFederation(work / "local", n, tls=tls or auth, auth=auth, threads=threads, log=say) as fed:
            code = fed.run_app(app_dir, stream=say, timeout=timeout)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: every process stopped; continue with the same command", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except RuntimeError as exc:
        _fail(str(exc), 1)
    try:
        result = json.loads(status.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = {"status": "failed", "error": f"the ServerApp ended without a result (flwr run exit status {code}); "
                                                f"see {work / 'local' / 'logs'}"}
    if result.get("status") != "complete":
        _fail(str(result.get("error")), 1)
    _print_table(run_dir)
    typer.echo(f"accuracy plot: {run_dir / 'accuracy.png'}")  # written by the ServerApp
    typer.echo(f"finished in {time.perf_counter() - started:.0f} s on Flower; run directory: {run_dir}")


@app.command()
def attacks() -> None:
    """List the attacks with their threat models and settings."""
    from rvepfl.attacks.registry import attacks as every_attack

    for name, a in every_attack().items():
        threats = ", ".join(f"{t} (default)" if i == 0 else t for i, t in enumerate(a.threats))
        typer.echo(f"{name:7s} {a.label}: {a.description}")
        typer.echo(f"        threat models: {threats}")
        defaults = [f"--iterations {a.default_iterations}" if a.default_iterations is not None else "",
                    f"--restarts {a.default_restarts}" if a.default_restarts is not None else ""]
        if any(defaults):
            typer.echo(f"        defaults: {', '.join(d for d in defaults if d)}")
        for key, (default, meaning) in a.settings_doc().items():
            typer.echo(f"        --param {key}={_toml_value(default)}: {meaning}")


@app.command()
def methods() -> None:
    """List the methods and privacy mechanisms with their settings."""
    from rvepfl import registry
    from rvepfl.params import field_docs

    def show(name: str, cls: type[Method], own: dict[str, type]) -> None:
        typer.echo(f"{name:10s} {cls.description}")
        for section, params in own.items():
            docs = field_docs(params)
            for f in dataclasses.fields(params):
                typer.echo(f"    {section}.{f.name} = {_toml_value(f.default)}: {docs.get(f.name, '')}")

    typer.echo("Methods (the `method` key):")
    for name, cls in registry.methods().items():
        show(name, cls, cls.sections())
    typer.echo("Privacy mechanisms: alone (on fedavg, e.g. `nbafl`), or on any method they can wrap "
               "(METHOD+MECHANISM, e.g. `rvepfl+nbafl`; more after it wrap in turn, e.g. `fedavg+dp-sgd+nbafl`):")
    for name, mech in registry.mechanisms().items():
        show(name, mech, mech.sections())


def _toml_value(value: Any) -> str:
    """``value`` as TOML writes it (``true``, ``"iid"``, ``0.001``)."""
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Print the per-round table of a finished or stopped run."""
    _print_table(run_dir)
    typer.echo(f"run directory: {run_dir}")


def _run_suite(suite: Suite, out: Path | None, quiet: bool, ray_address: str | None = None) -> SuiteReport:
    """Run a compare or audit suite with progress on stderr (its runs as tasks on the Ray cluster
    at ``ray_address``, if given); Ctrl-C ends it resumable."""
    from rvepfl.experiments.runner import run_suite

    return _resumable(lambda stream: run_suite(suite, out, progress=_prefixed(stream, quiet), log=stream.line,
                                               status=None if quiet else stream.status, ray_address=ray_address))


_RAY_ADDRESS_HELP = ("Run every run (its training, then its attacks) as a task on the Ray cluster at this address: "
                     "auto (the one `ray start` began on this machine) or the head node's HOST:PORT. --out must be on "
                     "a filesystem every node shares. Needs the ray extra (pip install -e '.[ray]').")
_RAY_ADDRESS_DEFAULT = "none: this machine alone"


def _check_ray_address(ray_address: str | None) -> None:
    """Ray installed and a cluster answering at ``ray_address`` (if given): one line otherwise,
    before the command's first line."""
    if ray_address is not None:
        from rvepfl.experiments.ray_fanout import check_address

        check_address(ray_address)


def _resumable(job: Callable[[ProgressStream], Any]) -> Any:
    """``job(stream)`` with progress on stderr; Ctrl-C ends it with a line saying how to continue."""
    stream = ProgressStream()
    try:
        return job(stream)
    except KeyboardInterrupt:
        stream.clear()
        typer.echo("\ninterrupted: run the same command again to continue", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        stream.clear()


@app.command()
def compare(
    config: Annotated[Path, typer.Option(help="Compare file (TOML): methods, datasets, seeds and a base run config.")],
    out: Annotated[Optional[Path], typer.Option(help=_default("Output directory.", "runs/<name>, or runs/<name>-smoke with --smoke"))] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Shrink every run (200 images, 2 clients, 2 rounds, 1 epoch, batch 32) to check the file end to end.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Only one line per run, no per-round progress.")] = False,
) -> None:
    """Compare methods on identical partitions: tables and plots.

    Trains every method x dataset x seed of the compare file on identical partitions and writes
    table.csv, table.md and plots. Finished runs are skipped and interrupted ones resume: run the
    same command again to continue.
    """
    from rvepfl.experiments.spec import load_suite

    suite = load_suite(config, smoke=smoke)
    typer.echo(f"{suite.name}: {len(suite.methods)} methods x {len(suite.datasets)} datasets x "
               f"{len(suite.seeds)} seeds = {len(suite.runs)} runs", err=True)
    report = _run_suite(suite, out, quiet)
    typer.echo(report.markdown)
    typer.echo(f"results: {report.out} (table.csv, table.md, {', '.join(p.name for p in report.plots)})")


@app.command()
def attack(
    name: Annotated[str, typer.Argument(metavar="ATTACK", help="An attack, as `rvepfl attacks` lists them.")],
    run: Annotated[Path, typer.Option(help="Run directory written by `rvepfl train` (read only).")],
    round_: Annotated[Optional[int], typer.Option("--round", help=_default("Round whose saved states are attacked.", "the last with client states"))] = None,
    client: Annotated[str, typer.Option(help="The victim client; with --threat-model stolen also all, or indices such as 0,3: each client's personal model in turn, pooled into one scores.csv.")] = "0",
    batch_size: Annotated[int, typer.Option(help="Images in each observed gradient or update (gradient attacks).")] = 1,
    images: Annotated[Optional[int], typer.Option(help=_default("Images to attack, a multiple of --batch-size (mia: members, and as many non-members).", "4 batches; model inversion: one per class; mia: all the client's training images"))] = None,
    threat_model: Annotated[Optional[str], typer.Option(help=_default("gradient | update | aggregate (gradient attacks; aggregate: ig) | released | stolen (model inversion, mia).", "the attack's first threat model in `rvepfl attacks`"))] = None,
    local_steps: Annotated[Optional[int], typer.Option(help=_default("update, aggregate: local steps of the observed round, each on the whole batch.", "the run's train.local_epochs"))] = None,
    clients_in_sum: Annotated[Optional[int], typer.Option(help=_default("aggregate: the clients whose uploads the observed mean holds, the victim and the next ones of the round.", 2))] = None,
    iterations: Annotated[Optional[int], typer.Option(help=_default("Optimiser iterations.", "the attack's, in `rvepfl attacks`"))] = None,
    restarts: Annotated[Optional[int], typer.Option(help=_default("Random restarts, the best one kept by the attack's own loss (attacks that take them).", "the attack's, in `rvepfl attacks`"))] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", metavar="KEY=VALUE", help="One of the attack's own settings (`rvepfl attacks` lists them); repeatable.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the attack (victim batches, initial guesses, noise).")] = 0,
    threads: Annotated[Optional[int], typer.Option(help=_default("Torch CPU threads of the attack and of what it trains (0: torch's default, one per core; one stays fast when another job shares the cores).", ATTACK_THREADS))] = None,
    references: Annotated[Optional[int], typer.Option(help=_default("mia: LiRA's reference models, trained on images no client has (at least 2; cached in RUN/attacks).", 4))] = None,
    evaluator_images: Annotated[int, typer.Option(help="Train the evaluator on up to N images no client has, or, in a run that used every image, of the clients other than --client (at least 100; cached per N in RUN/attacks).")] = 5000,
    out: Annotated[Optional[Path], typer.Option(help=_default("Output directory (where the audit writes).", "RUN/attacks/<attack>-<threat model>"))] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines.")] = False,
) -> None:
    """Attack a trained run and score its reconstructions.

    Writes scores.csv, summary.json and grid.png (truth above reconstruction); mia, membership
    inference, writes roc.png instead of grid.png. An interrupted gradient attack resumes when the
    same command is run again.
    """
    from rvepfl.attacks.base import check_clients, parse_clients
    from rvepfl.attacks.registry import attack as attack_named
    from rvepfl.attacks.runner import AttackRequest, run_attack
    from rvepfl.attacks.threat import Target

    stream = ProgressStream()

    def log(line: str) -> None:
        if not quiet:
            stream.line(line)

    if threads is not None and threads < 0:
        raise ConfigError(f"Expected --threads >= 0, got {threads}")
    chosen = attack_named(name)
    params = _key_values(param or [], "--param")
    victim, victims = parse_clients(client)
    request = AttackRequest(
        threat=threat_model, round=round_, client=victim, batch_size=batch_size, images=images, iterations=iterations,
        restarts=restarts, seed=seed, local_steps=local_steps, evaluator_images=evaluator_images,
        references=references, params=params, clients=victims, clients_in_sum=clients_in_sum)
    check_clients(chosen, request)  # several clients: threat model stolen only, for every attack
    target = Target(run)
    settings = chosen.resolve(target, request)
    # Open what the attack reads before anything is written: a corrupt checkpoint fails here.
    chosen.open(target, settings)
    dest = out if out is not None else target.run.path / "attacks" / f"{settings.attack}-{settings.threat}"
    who = f"clients {', '.join(map(str, settings.clients))}" if settings.clients else f"client {settings.client}"
    log(f"{settings.attack} on {target.method.name} ({target.run.path}), threat model {settings.threat}, "
        f"round {settings.round}, {who}")
    try:
        with attack_threads(threads):
            summary = run_attack(target, settings, dest, log, status=None if quiet else stream.status)
    except KeyboardInterrupt:
        stream.clear()
        typer.echo("\ninterrupted: run the same command again to continue", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        stream.clear()
    for line in chosen.report(summary):
        typer.echo(line)
    typer.echo(f"results: {dest} ({chosen.files})")


def _key_values(items: list[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; a one-line error for one without ``=`` or a repeated key."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"Expected {flag} KEY=VALUE, got {item!r}")
        if key in out:
            raise ConfigError(f"{flag} {key} given twice")
        out[key] = value
    return out


@app.command()
def audit(
    config: Annotated[Path, typer.Option(help="Audit file (TOML): a compare file plus an [audit] table.")],
    out: Annotated[Optional[Path], typer.Option(help=_default("Output directory; its trained runs are reused.", "runs/<name>"))] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Shrink every run and attack to check the file end to end.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Only one line per run and attack.")] = False,
    ray_address: Annotated[Optional[str], typer.Option(help=_default(_RAY_ADDRESS_HELP, _RAY_ADDRESS_DEFAULT))] = None,
) -> None:
    """Attack every run of a comparison: privacy against utility.

    Trains (or reuses) every method of a comparison, runs every attack on each and writes
    audit.csv, audit.md and a privacy-utility plot per data set. Run it again to continue after a
    stop.
    """
    from rvepfl.experiments.spec import load_suite

    suite = load_suite(config, audit=True, smoke=smoke)
    _check_ray_address(ray_address)
    typer.echo(f"{suite.name}: {len(suite.runs)} runs x {len(suite.jobs())} attacks", err=True)
    report = _run_suite(suite, out, quiet, ray_address)
    typer.echo(report.audit_markdown)
    typer.echo(f"results: {report.out} (audit.csv, audit.md, {', '.join(p.name for p in report.audit_plots)})")


@app.command()
def frontier(
    config: Annotated[Path, typer.Option(help="Frontier file (TOML): an audit file plus [sweep.<method>] tables.")],
    out: Annotated[Optional[Path], typer.Option(help=_default("Output directory; its finished runs and attacks are reused.", "runs/<name>"))] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Shrink every run and attack to check the file end to end.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Only one line per run and attack.")] = False,
    ray_address: Annotated[Optional[str], typer.Option(help=_default(_RAY_ADDRESS_HELP, _RAY_ADDRESS_DEFAULT))] = None,
    runs_at_once: Annotated[Optional[int], typer.Option(help=_default("Runs side by side on this machine, each in its own process (overrides frontier.runs_at_once).", "the file's, else 1"))] = None,
) -> None:
    """Sweep each method's privacy knob: who is more accurate at equal protection.

    Trains every point of every sweep over the file's seeds on identical clients, attacks each
    run, and writes frontier.csv, frontier.md (means with 95 % intervals, and the verdict) and a
    frontier plot per data set. Run it again to continue after a stop.
    """
    from rvepfl.experiments.frontier import load_frontier, run_frontier

    plan = load_frontier(config, smoke=smoke)
    if runs_at_once is not None:
        if runs_at_once < 1:
            raise ConfigError(f"Expected --runs-at-once >= 1 (runs side by side, each in its own process), got "
                              f"{runs_at_once}")
        plan = dataclasses.replace(plan, runs_at_once=runs_at_once)
    _check_ray_address(ray_address)
    suite = plan.suite
    typer.echo(f"{suite.name}: {len(suite.runs)} runs x {len(suite.jobs())} attacks", err=True)
    report = _resumable(lambda stream: run_frontier(plan, out, progress=_prefixed(stream, quiet), log=stream.line,
                                                    status=None if quiet else stream.status, ray_address=ray_address))
    typer.echo(report.markdown)
    typer.echo(f"results: {report.out} ({', '.join(p.name for p in report.files)})")

def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns user errors into one line on stderr."""
    tune_allocator()
    try:
        code = app(args=argv, prog_name="rvepfl", standalone_mode=False)
    except RvepflError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # usage errors of the CLI library: one line, no traceback
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message(), err=True)  # type: ignore[attr-defined]
            return 0
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            typer.echo(f"error: {exc.format_message()} (see `rvepfl --help`)", err=True)
            return EXIT_USER_ERROR
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
