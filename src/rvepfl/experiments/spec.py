"""Suite files: what ``rvepfl compare`` and ``rvepfl audit`` run, loaded and validated.

A suite is a grid: every method x data set x seed is one run (a complete run config), and an
audit adds attack jobs that run on every run. A suite file (TOML) names the methods, data sets
and seeds, and a base run config applied to every run::

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

``method``, ``seed``, ``name`` and ``data.dataset`` are set by the suite for each run and may not
appear in ``[base]`` or the override tables. The per-method ``[overrides.<method>]`` tables may
not touch ``[data]``: the engine derives a run's partition from its seed and data settings only,
so keeping those equal is what gives every method the same clients for a given data set and seed.
A run is named ``<dataset>-<method>-seed<k>``.

An audit file is a suite file with one more table (``rvepfl compare`` ignores it)::

    [audit]
    attacks = ["dlg", "idlg", "ig", "miface"]   # any of `rvepfl attacks` (default: every one)
    miface_threats = ["released", "stolen"]     # <attack>_threats: the threat models an attack runs
    mia_threats = ["released", "stolen"]        # under (default: every one it serves, but `update`
                                                # and `aggregate`: ig_threats = ["gradient", "aggregate"]
                                                # adds secure aggregation's view, 2 clients in the sum)
    references = 4                              # mia: LiRA's reference models (at least 2)
    update_attacks = ["ig"]                     # gradient attacks also run on the whole local
                                                # update (threat model `update`; default none)
    local_steps = 2                             # its local steps, and aggregate's (default: train.local_epochs)
    client = 0                                  # the victim client of every run
    stolen_clients = "all"                      # the stolen-model jobs' clients: "all" or a list
                                                # (default [client]); each one's model in turn,
                                                # pooled into one scores.csv
    images = 4                                  # images per gradient attack
    batch_size = 1                              # images per observed gradient or update
    evaluator_images = 3000                     # held-out images the evaluator trains on
    seed = 0                                    # the attacks' seed
    workers = 2                                 # processes that run a run's attacks side by side
                                                # (default 1; the numbers do not depend on it)
    [audit.iterations]                          # optional, per attack or per attack-threat
    ig = 1000                                   # (the more specific key wins)
    ig-update = 500
    [audit.restarts]                            # optional, the same keys (default: the attack's;
    dlg = 2                                     # only attacks that take restarts)
    [audit.params.<attack>]                     # optional: an attack's own settings
                                                # (`rvepfl attacks` lists them)

The jobs of a run are every attack under its threat models: ``gradient`` for the attacks on an
upload, and ``update`` too for those in ``update_attacks``; ``<attack>_threats`` (default: every
threat model the attack serves) for the others. ``aggregate`` (the server's view under secure
aggregation, :mod:`rvepfl.attacks.threat`) runs only where ``<attack>_threats`` names it. On a run
trained with secure aggregation, ``gradient`` and ``update`` have no surface: their rows say why.
Membership inference (mia) attacks all of the victim's training images (members) against as many
images no client has, so its runs must keep images out (``data.subset``). A job under threat
model ``stolen`` attacks the personal model of each client of ``stolen_clients`` in turn
(``"all"``: every client of the run), so its ``scores.csv`` holds the classes (mia: the images)
of them all; the other jobs attack ``client``.

``--smoke`` shrinks every run (:data:`SMOKE_OVERRIDES`, equal for all methods) and every attack
(3 iterations, one batch of images, no restarts, at most 600 evaluator images, 2 reference models,
and each attack's own ``smoke`` settings).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

from rvepfl.attacks.base import MIN_EVALUATOR_DRAW, AttackRequest, parse_params
from rvepfl.attacks.registry import attack, attacks
from rvepfl.config import (
    Config,
    DatasetName,
    check_name,
    config_from_dict,
    flatten,
    read_toml_file,
)
from rvepfl.errors import ConfigError, short_repr
from rvepfl.registry import available_methods, method_class

__all__ = [
    "SMOKE_OVERRIDES",
    "AttackJob",
    "AuditPlan",
    "RunSpec",
    "Suite",
    "default_out",
    "load_suite",
    "suite_from_dict",
]

#: What ``--smoke`` sets in every run (equal for all methods, so partitions stay identical).
SMOKE_OVERRIDES: dict[str, dict[str, Any]] = {
    "data": {"subset": 200, "num_clients": 2},
    "train": {"rounds": 2, "local_epochs": 1, "batch_size": 32},
}

_TOP_KEYS = ("name", "methods", "datasets", "seeds", "base", "dataset_overrides", "overrides", "audit")
_SET_BY_SUITE = {"name": "`name`", "method": "`methods`", "seed": "`seeds`"}
_AUDIT_KEYS = ("attacks", "update_attacks", "local_steps", "client", "stolen_clients", "images", "batch_size",
               "evaluator_images", "references", "seed", "workers", "iterations", "restarts", "params")
"""The ``[audit]`` keys besides ``<attack>_threats`` (one per attack)."""
DEFAULT_REFERENCES = 4
"""mia's reference models in an audit unless ``audit.references`` says otherwise."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a suite: 1-based position, data set, method, seed and its full config."""

    index: int
    dataset: str
    method: str
    seed: int
    cfg: Config
    knob: str | None = None
    """A frontier's swept config key (``nbafl.epsilon``) when this run is a point of a sweep."""
    value: float | None = None
    """The swept key's value."""

    @property
    def point(self) -> str:
        """The sweep point, ``<key's last part><value>`` (``epsilon20``), or "" outside a sweep."""
        return "" if self.knob is None else f"{self.knob.rsplit('.', 1)[-1]}{self.value:g}"

    @property
    def label(self) -> str:
        """The run directory's name, ``<dataset>-<method>-seed<k>``; a sweep point's is
        ``<dataset>-<method>-<point>-seed<k>``."""
        point = f"-{self.point}" if self.point else ""
        return f"{self.dataset}-{self.method}{point}-seed{self.seed}"

    @property
    def title(self) -> str:
        """The run in a progress line: ``mnist nbafl seed 1``, or ``mnist nbafl epsilon=20 seed 1``."""
        point = "" if self.knob is None else f" {self.knob.rsplit('.', 1)[-1]}={self.value:g}"
        return f"{self.dataset} {self.method}{point} seed {self.seed}"


@dataclass(frozen=True)
class AttackJob:
    """One attack under one threat model, run on every run of an audit."""

    attack: str
    threat: str

    @property
    def key(self) -> str:
        """``<attack>-<threat>``: the job's directory under ``attacks/`` and its key in
        ``[audit.iterations]`` and ``[audit.restarts]``."""
        return f"{self.attack}-{self.threat}"

    @property
    def title(self) -> str:
        """The job in a table or plot: the attack, with its threat model unless that is ``gradient``.

        >>> AttackJob("ig", "gradient").title, AttackJob("ig", "update").title
        ('ig', 'ig (update)')
        """
        return self.attack if self.threat == "gradient" else f"{self.attack} ({self.threat})"


@dataclass(frozen=True)
class AuditPlan:
    """A validated ``[audit]`` table: the attacks every run of a suite receives, and their settings."""

    attacks: tuple[str, ...]
    threats: dict[str, tuple[str, ...]]
    """Per attack, the threat models it runs under, in its own order."""
    client: int
    images: int
    batch_size: int
    evaluator_images: int
    seed: int
    iterations: dict[str, int]
    update_attacks: tuple[str, ...] = ()
    local_steps: int | None = None
    """Local steps of the observed round (threat model ``update``); None: each run's train.local_epochs."""
    restarts: dict[str, int] = field(default_factory=dict)
    references: int = DEFAULT_REFERENCES
    """mia: LiRA's reference models (trained once per data set, seed and model, and shared)."""
    workers: int = 1
    """Processes that run the jobs of one run side by side (1: one after another, in-process);
    :mod:`rvepfl.experiments.attack_pool`."""
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per attack, its own settings (``[audit.params.<attack>]``), checked against its ``Params``."""
    stolen_clients: tuple[int, ...] | str | None = None
    """The clients whose personal models a job under threat model ``stolen`` attacks in turn:
    ``"all"`` or their indices; None: ``client`` alone."""

    def kept_clients(self, num_clients: int) -> tuple[int, ...]:
        """The clients whose saved states the jobs attack in a run of ``num_clients`` clients:
        ``client``, and ``stolen_clients`` where a job runs under ``stolen`` (a frontier's
        pruning keeps theirs).

        >>> plan = AuditPlan(("miface",), {"miface": ("stolen",)}, 0, 4, 1, 3000, 0, {}, stolen_clients="all")
        >>> plan.kept_clients(3), replace(plan, threats={"miface": ("released",)}).kept_clients(3)
        ((0, 1, 2), (0,))
        """
        stolen = any(job.threat == "stolen" for job in self.jobs())
        if not stolen or self.stolen_clients is None:
            return (self.client,)
        extra = range(num_clients) if self.stolen_clients == "all" else self.stolen_clients
        return tuple(sorted({self.client, *extra}))

    def jobs(self) -> tuple[AttackJob, ...]:
        """Every (attack, threat) job, in the order of ``attacks``."""
        return tuple(AttackJob(a, t) for a in self.attacks for t in self.threats[a])

    def iterations_of(self, job: AttackJob) -> int | None:
        """The job's iterations: its ``attack-threat`` key, else its attack's, else None (the attack's default)."""
        return self.iterations.get(job.key, self.iterations.get(job.attack))

    def restarts_of(self, job: AttackJob) -> int | None:
        """The job's restarts: its ``attack-threat`` key, else its attack's, else None (the attack's default)."""
        return self.restarts.get(job.key, self.restarts.get(job.attack))

    def request(self, job: AttackJob) -> AttackRequest:
        """What the audit asks of ``job``'s attack on a run's victim client (under ``stolen``: its
        ``stolen_clients``), its last round: the audit's settings that the attack takes in an
        audit (its ``audit_options``), its own ``params``; the attack's defaults for the rest."""
        values: dict[str, Any] = {
            "batch_size": self.batch_size, "images": self.images, "iterations": self.iterations_of(job),
            "restarts": self.restarts_of(job),
            "local_steps": self.local_steps if job.threat in ("update", "aggregate") else None,
            "evaluator_images": self.evaluator_images, "references": self.references,
        }
        taken = attack(job.attack).audit_options
        return AttackRequest(threat=job.threat, client=self.client, seed=self.seed,
                             params=self.params.get(job.attack, {}),
                             clients=self.stolen_clients if job.threat == "stolen" else None,
                             **{k: v for k, v in values.items() if k in taken})


@dataclass(frozen=True)
class Suite:
    """A validated suite file: its lists, every run's config, the file's text and, for an audit,
    the attacks of every run."""

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
    audit: AuditPlan | None = None
    """The ``[audit]`` table, when the suite was loaded as an audit."""

    def jobs(self) -> tuple[AttackJob, ...]:
        """The attack jobs every run receives; none without an audit."""
        return () if self.audit is None else self.audit.jobs()


# -- the grid of runs ----------------------------------------------------------------------------
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
    for key, source in _SET_BY_SUITE.items():
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


def _grid(values: dict[str, Any], *, smoke: bool, source: str, default_name: str) -> Suite:
    """The suite's runs: every data set x seed x method, each a validated run config."""
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
    return Suite(name, methods, datasets, seeds, tuple(runs), smoke, source, setups,
                 {m: v for m, v in shown.items() if v})


# -- the [audit] table ---------------------------------------------------------------------------
def _audit_table(values: dict[str, Any]) -> dict[str, Any]:
    """The ``[audit]`` table, its keys checked (before anything else of the file, as ever)."""
    audit = values.get("audit")
    if not isinstance(audit, dict):
        raise ConfigError("Expected an [audit] table (attacks, client, images, ...)")
    allowed = (*_AUDIT_KEYS, *(f"{a}_threats" for a in attacks()))
    for key in audit:
        if key not in allowed:
            raise ConfigError(f"Unknown audit key `audit.{key}`: allowed: {', '.join(allowed)}")
    return audit


def _audit_names(audit: dict[str, Any], key: str, allowed: tuple[str, ...], default: list[str]) -> tuple[str, ...]:
    value = audit.get(key, default)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"Expected `audit.{key}` to be a non-empty list of names, got {value!r}")
    for v in value:
        if v not in allowed:
            raise ConfigError(f"Unknown name {v!r} in `audit.{key}`: choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(value))


def _audit_integer(audit: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = audit.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"Expected `audit.{key}` to be an integer >= {minimum}, got {value!r}")
    return value


def _audit_per_job(audit: dict[str, Any], key: str, allowed: tuple[str, ...]) -> dict[str, int]:
    table = audit.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"Expected `audit.{key}` to be a table of attack = count, got {table!r}")
    for k, v in table.items():
        if k not in allowed or isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"Expected `audit.{key}.{k}` to name one of {', '.join(allowed)} and be an "
                              f"integer >= 1, got {v!r}")
    return dict(table)


def _job_keys(names: list[str]) -> tuple[str, ...]:
    """Each attack of ``names`` and its ``attack-threat`` keys, attack by attack."""
    return tuple(k for a in names for k in (a, *(f"{a}-{t}" for t in attack(a).threats)))


def _audit_params(audit: dict[str, Any], names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``[audit.params.<attack>]``: each table checked against its attack's ``Params``."""
    table = audit.get("params", {})
    if not isinstance(table, dict):
        raise ConfigError(f"Expected `audit.params` to be a table of [audit.params.<attack>] tables, got {table!r}")
    for name, values in table.items():
        if name not in names:
            raise ConfigError(f"`[audit.params.{name}]` names no attack of `audit.attacks` ({', '.join(names)})")
        if not isinstance(values, dict):
            raise ConfigError(f"Expected `audit.params.{name}` to be a table, got {values!r}")
        parse_params(attack(name), values, f"[audit.params.{name}]")
    return {name: dict(values) for name, values in table.items()}


def _stolen_clients(audit: dict[str, Any], runs: tuple[RunSpec, ...]) -> tuple[int, ...] | str | None:
    """``audit.stolen_clients``: ``"all"``, or a non-empty list of client indices (repeats
    dropped) below every run's ``data.num_clients``; None when absent."""
    if "stolen_clients" not in audit:
        return None
    value = audit["stolen_clients"]
    if value == "all":
        return "all"
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ConfigError(f'Expected `audit.stolen_clients` to be "all" or a non-empty list of client indices >= 0, '
                          f"got {short_repr(value)}")
    for r in runs:
        n = r.cfg.data.num_clients
        if max(value) >= n:
            raise ConfigError(f"Expected `audit.stolen_clients` < {n} (clients of {r.label}), got {max(value)}")
    return tuple(dict.fromkeys(value))


def _audit_plan(audit: dict[str, Any], runs: tuple[RunSpec, ...], *, smoke: bool) -> AuditPlan:
    """Validate the values of an ``[audit]`` table against the suite's runs."""
    every = attacks()
    names = tuple(every)
    chosen = _audit_names(audit, "attacks", names, list(names))
    uploads = tuple(a for a in names if "update" in every[a].threats)
    update_attacks = (_audit_names(audit, "update_attacks", uploads, [])
                      if audit.get("update_attacks", []) != [] else ())
    for a in update_attacks:
        if a not in chosen:
            raise ConfigError(f"Expected `audit.update_attacks` to name attacks that `audit.attacks` runs "
                              f"({', '.join(chosen)}), got {a!r}")
    threats: dict[str, tuple[str, ...]] = {}
    for a in names:
        own = every[a].threats
        if "update" in own:  # an upload attack: the gradient, and the update where update_attacks says so;
            # the aggregate (secure aggregation's view) only where <attack>_threats names it
            default = [t for t in own if t != "aggregate" and (t != "update" or a in update_attacks)]
        else:
            default = list(own)
        threats[a] = _audit_names(audit, f"{a}_threats", own, default)
    references = _audit_integer(audit, "references", DEFAULT_REFERENCES, 2)
    local_steps = _audit_integer(audit, "local_steps", 1, 1) if "local_steps" in audit else None
    iterations = _audit_per_job(audit, "iterations",
                                _job_keys([a for a in names if every[a].default_iterations is not None]))
    restarts = _audit_per_job(audit, "restarts", _job_keys([a for a in names if every[a].default_restarts is not None]))
    params = _audit_params(audit, chosen)
    batch = _audit_integer(audit, "batch_size", 1, 1)
    images = _audit_integer(audit, "images", 4, 1)
    if images % batch:
        raise ConfigError(f"Expected `audit.images` to be a multiple of `audit.batch_size` ({batch}), got {images}")
    for a in chosen:
        if every[a].needs_single_image and batch != 1:
            raise ConfigError(f"{every[a].label} reads the label of a single image: set `audit.batch_size = 1` or "
                              f"drop {a}")
    client = _audit_integer(audit, "client", 0, 0)
    for r in runs:
        if client >= r.cfg.data.num_clients:
            raise ConfigError(
                f"Expected `audit.client` < {r.cfg.data.num_clients} (clients of {r.label}), got {client}")
    stolen_clients = _stolen_clients(audit, runs)
    evaluator_images = _audit_integer(audit, "evaluator_images", 3000, MIN_EVALUATOR_DRAW)
    if smoke:
        iterations = {a: 3 for a in names if every[a].default_iterations is not None}
        restarts = {a: 1 for a in names if every[a].default_restarts is not None}
        images = batch
        evaluator_images = min(evaluator_images, 600)
        references = 2
        params = {a: {**params.get(a, {}), **every[a].smoke} for a in chosen if every[a].smoke or a in params}
    return AuditPlan(chosen, threats, client, images, batch, evaluator_images, _audit_integer(audit, "seed", 0, 0),
                     iterations, update_attacks, local_steps, restarts, references,
                     _audit_integer(audit, "workers", 1, 1), params, stolen_clients)


# -- loading -------------------------------------------------------------------------------------
def suite_from_dict(values: dict[str, Any], *, audit: bool = False, smoke: bool = False, source: str = "",
                    default_name: str | None = None) -> Suite:
    """Validate a parsed suite file and build every run's config.

    Parameters
    ----------
    values
        The parsed TOML file.
    audit
        Read the file as an audit: its ``[audit]`` table is required and becomes
        :attr:`Suite.audit`. Otherwise that table is ignored (``rvepfl compare`` trains the runs
        of an audit file).
    smoke
        Shrink every run and attack (see the module docstring).
    source
        The file's text, kept with the suite and copied beside its results.
    default_name
        The suite's name when ``values`` has none (default ``audit`` or ``compare``).

    Returns
    -------
    Suite
        The runs in order: data set, then seed, then method.

    Raises
    ------
    ConfigError
        With a one-line message naming the first bad key or value.

    Examples
    --------
    >>> suite = suite_from_dict({"methods": ["fedavg", "fedper"], "datasets": ["mnist"], "seeds": [0, 1]})
    >>> suite.name, [r.label for r in suite.runs][:3], suite.jobs()
    ('compare', ['mnist-fedavg-seed0', 'mnist-fedper-seed0', 'mnist-fedavg-seed1'], ())
    """
    table = _audit_table(values) if audit else None
    if default_name is None:
        default_name = "audit" if audit else "compare"
    suite = _grid(values, smoke=smoke, source=source, default_name=default_name)
    if table is None:
        return suite
    return replace(suite, audit=_audit_plan(table, suite.runs, smoke=smoke))


def load_suite(path: str | Path, *, audit: bool = False, smoke: bool = False) -> Suite:
    """Load and validate a suite file (see the module docstring for its format).

    Parameters
    ----------
    path
        The TOML file; its stem is the suite's name when it sets none.
    audit, smoke
        As in :func:`suite_from_dict`.

    Raises
    ------
    ConfigError
        A missing or malformed file, or a bad key or value; one line that starts with the path.
    """
    path = Path(path)
    text, values = read_toml_file(path, "audit file" if audit else "compare file")
    try:
        return suite_from_dict(values, audit=audit, smoke=smoke, source=text, default_name=path.stem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def default_out(suite: Suite) -> Path:
    """``runs/<name>``, or ``runs/<name>-smoke`` for a smoke suite."""
    return Path("runs") / (f"{suite.name}-smoke" if suite.smoke else suite.name)
