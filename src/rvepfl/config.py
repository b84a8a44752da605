"""Configuration: frozen dataclasses loaded from TOML, overridden by CLI flags, validated.

A config has top-level keys, the engine's sections (``[data]``, ``[train]``, ``[faults]``,
``[secure_aggregation]``) and
one section per method or mechanism that has settings (``[model]`` for RVE-PFL, ``[nbafl]``,
``[dp_fedavg]``, ``[dp_sgd]``, ``[personal]`` for FedRep, ...). Those sections are not listed
here: each method and mechanism declares its own dataclass (``Params``) and section beside its
class, and :class:`Config` is made from the engine's part (:class:`EngineConfig`, defined in
:mod:`rvepfl.engine_config` and exported here) plus every section :func:`rvepfl.registry.sections`
finds. Unknown keys, wrong types and out-of-range values raise :class:`~rvepfl.errors.ConfigError`
with a one-line message naming the key, the value received and what is allowed.

A run is identified by :func:`config_hash`, which covers the engine's settings that change
numbers and the sections of the method and mechanism the run uses, nothing else: a new method's
section changes no other run's hash.

>>> cfg = Config()
>>> cfg.data.dataset, cfg.train.batch_size
('mnist', 64)
>>> apply_overrides(cfg, {"train.rounds": 3}).train.rounds
3
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

import tomli_w

from rvepfl import registry
from rvepfl.engine_config import (  # noqa: F401 - exported here, where they have always been
    Aggregation,
    DataConfig,
    DatasetName,
    DecayClock,
    DeviceName,
    EngineConfig,
    FaultsConfig,
    OptimiserScope,
    PartitionName,
    RunConfig,
    SecureAggregationConfig,
    SplitMode,
    TestSplit,
    TrainConfig,
)
from rvepfl.errors import ConfigError, short_repr
from rvepfl.params import check_params, need

__all__ = [
    "Config",
    "DataConfig",
    "EngineConfig",
    "FaultsConfig",
    "SecureAggregationConfig",
    "TrainConfig",
    "apply_overrides",
    "check_name",
    "config_hash",
    "config_to_dict",
    "load_config",
    "dumps_config",
    "flatten",
    "legacy_config_hash",
    "read_toml_file",
    "used_sections",
]


def _make_config() -> type:
    """:class:`EngineConfig` plus a field per method or mechanism section, each defaulting to its
    dataclass's defaults (pickled by reference as ``rvepfl.config.Config``)."""
    extra = [(name, params, field(default_factory=params)) for name, params in registry.sections().items()]
    cls = dataclasses.make_dataclass("Config", extra, bases=(EngineConfig,), frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = ("A whole run configuration: :class:`EngineConfig`'s keys and sections, and one section "
                   f"per method or mechanism with settings ({', '.join(f'[{e[0]}]' for e in extra)}).")
    return cls


if TYPE_CHECKING:  # what a type checker knows of it: the engine's keys and sections, typed
    Config = RunConfig
else:
    Config = _make_config()


_INT64 = (-(2**63), 2**63 - 1)
_MAX_THREADS = 1024
_ENGINE_SECTIONS = {"data": DataConfig, "train": TrainConfig, "faults": FaultsConfig,
                    "secure_aggregation": SecureAggregationConfig}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(tp: Any) -> Any:
    """``X`` for an annotation ``X | None`` (a key whose absence means "not set"), else ``tp``."""
    args = get_args(tp)
    if get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner
    return tp


def _describe(tp: Any) -> str:
    tp = _optional(tp)
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotated type ``tp``; ints are accepted for floats, and for a
    choice spelt in digits (``train.precision = 32`` means ``"32"``)."""
    ok: bool
    tp = _optional(tp)  # TOML has no null: a value given is never None
    if get_origin(tp) is Literal:
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in get_args(tp):
            value = str(value)
        ok = value in get_args(tp)
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not _INT64[0] <= value <= _INT64[1]:
            raise ConfigError(
                f"Expected `{key}` to be a 64-bit integer (TOML's range), got {short_repr(value)}"
            )
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                value = float(value)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                raise ConfigError(f"Expected `{key}` to be a finite number, got {short_repr(value)}")
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - every field has one of the types above
        raise TypeError(f"unsupported config type {tp} for {key}")
    if not ok:
        raise ConfigError(f"Expected `{key}` to be {_describe(tp)}, got {short_repr(value)}")
    return value


def _unknown(key: str, allowed: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    shown = f"`{key}`" if key.isprintable() and len(key) <= 60 else short_repr(key)
    return ConfigError(f"Unknown config key {shown}: {hint}allowed: {', '.join(sorted(allowed))}")


#: The longest name (in UTF-8 bytes) that still leaves room in a 255-byte file name for the
#: suffixes the CLI adds (``-<time>``, ``-smoke``).
MAX_NAME_BYTES = 200


def check_name(value: object, key: str = "name") -> str:
    """``value`` if it can name one directory, the run or comparison directory it becomes
    (``runs/<name>-<time>``, ``runs/<name>``); else a one-line :class:`ConfigError`.

    A name is one path component: no ``/`` or ``\\``, not ``.`` or ``..``, no control
    characters (a NUL would crash the file system call, a newline would split the error line),
    at most :data:`MAX_NAME_BYTES` bytes in UTF-8. So no name from a file can make a command
    write outside the directory it was given.

    >>> check_name("compare-quick")
    'compare-quick'
    >>> check_name("../../x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rvepfl.errors.ConfigError: Expected `name` to be a directory name (1 to 200 bytes; ...), got '../../x'
    """
    try:
        size = len(value.encode("utf-8")) if isinstance(value, str) else 0
    except UnicodeEncodeError:  # a lone surrogate
        size = 0
    if not (
        isinstance(value, str)
        and 0 < size <= MAX_NAME_BYTES
        and value not in (".", "..")
        and all(c.isprintable() and c not in "/\\" for c in value)
    ):
        raise ConfigError(
            f"Expected `{key}` to be a directory name (1 to {MAX_NAME_BYTES} bytes; no '/', '\\' or "
            f"control characters; not '.' or '..'), got {short_repr(value)}"
        )
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise _unknown(full, list(hints))
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"Expected `{full}` to be a table [{full}], got {value!r}")
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, tp)
    return cls(**kwargs)


def _check(cfg: Config) -> Config:
    """Range checks that types alone cannot express: the engine's here, each section's by its
    own dataclass, the method name (and composition) by the registry."""
    d, t = cfg.data, cfg.train
    registry.method_class(cfg.method)
    check_name(cfg.name)
    need(cfg.seed >= 0, "seed", cfg.seed, ">= 0")
    need(0 <= cfg.threads <= _MAX_THREADS, "threads", cfg.threads,
         f"between 0 and {_MAX_THREADS} (0: torch's default)")
    need(0 <= cfg.workers <= 256, "workers", cfg.workers, "between 0 and 256 (0: one per core)")
    need("\x00" not in d.data_dir, "data.data_dir", d.data_dir, "to be a path without NUL characters")
    need(d.num_clients >= 1, "data.num_clients", d.num_clients, ">= 1")
    need(d.subset >= 0, "data.subset", d.subset, ">= 0 (0: all images)")
    need(0.0 < d.test_fraction < 1.0, "data.test_fraction", d.test_fraction, "in (0, 1)")
    need(d.shards_per_client >= 1, "data.shards_per_client", d.shards_per_client, ">= 1")
    need(d.dirichlet_alpha > 0, "data.dirichlet_alpha", d.dirichlet_alpha, "> 0")
    need(not d.download or bool(d.data_dir), "data.download", d.download,
         "to be used with `data.data_dir` (where to put the files)")
    need(t.rounds >= 1, "train.rounds", t.rounds, ">= 1")
    need(t.local_epochs >= 1, "train.local_epochs", t.local_epochs, ">= 1")
    need(t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1")
    need(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, ">= 1")
    need(t.lr > 0, "train.lr", t.lr, "> 0")
    need(t.adam_eps > 0, "train.adam_eps", t.adam_eps, "> 0")
    need(t.lr_decay >= 0, "train.lr_decay", t.lr_decay, ">= 0")
    need(0.0 < t.client_fraction <= 1.0, "train.client_fraction", t.client_fraction, "in (0, 1]")
    need(t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every, ">= 0")
    need(0 <= t.trim_fraction < 0.5, "train.trim_fraction", t.trim_fraction, "in [0, 0.5)")
    if t.max_update_norm is not None:
        need(t.max_update_norm > 0, "train.max_update_norm", t.max_update_norm, "> 0 (leave it out for no bound)")
    for section in registry.sections():
        check_params(getattr(cfg, section), section)
    f = cfg.faults
    need(0 <= f.min_clients <= cfg.clients_per_round, "faults.min_clients", f.min_clients,
         f"between 0 and the {cfg.clients_per_round} clients of a round (0: all of them)")
    need(f.client_timeout >= 0, "faults.client_timeout", f.client_timeout, ">= 0 (0: no limit)")
    _check_secure_aggregation(cfg)
    if d.test_split == "published-leaky":
        need(d.split == "combined", "data.split", d.split,
             'to be "combined" with `data.test_split = "published-leaky"` (the published code re-split each '
             "client's pooled shard; split = standard has no such shard)")
    if t.optimiser == "published-shared":
        need(cfg.workers <= 1, "workers", cfg.workers, "to be 0 or 1 with `train.optimiser = \"published-shared\"`, "
             "whose one optimiser passes from client to client")
        need(f.client_timeout == 0, "faults.client_timeout", f.client_timeout,
             "to be 0 with `train.optimiser = \"published-shared\"` (a client past its time limit runs in a "
             "process of its own, where the shared optimiser is not)")
    return cfg


def _check_secure_aggregation(cfg: Config) -> None:
    s, t, k = cfg.secure_aggregation, cfg.train, cfg.clients_per_round
    if not s.enabled:
        return
    need(k >= 2, "secure_aggregation.enabled", s.enabled,
         f"to be false with {k} client a round (the sum of one upload is that upload)")
    need(s.num_shares == 0 or 3 <= s.num_shares <= k, "secure_aggregation.num_shares", s.num_shares,
         f"to be 0 (every client of the round) or between 3 and the {k} clients of a round")
    need(s.num_shares in (0, k) or s.num_shares % 2 == 1, "secure_aggregation.num_shares", s.num_shares,
         f"to be odd below the {k} clients of a round (SecAgg+ gives each client num_shares // 2 neighbours "
         "on each side)")
    shares = s.num_shares or k
    need(s.reconstruction_threshold == 0 or 2 <= s.reconstruction_threshold <= shares,
         "secure_aggregation.reconstruction_threshold", s.reconstruction_threshold,
         f"to be 0 (more than half of the shares) or between 2 and the {shares} shares"
         + (f": a round has only {k} clients, fewer than the threshold" if s.reconstruction_threshold > k else ""))
    need(s.clipping_range > 0, "secure_aggregation.clipping_range", s.clipping_range, "> 0")
    need(s.quantization_range >= 2, "secure_aggregation.quantization_range", s.quantization_range, ">= 2")
    need(s.modulus_range > s.quantization_range and s.modulus_range & (s.modulus_range - 1) == 0
         and s.modulus_range <= 2**32, "secure_aggregation.modulus_range", s.modulus_range,
         "to be a power of 2 above quantization_range and at most 2**32")
    need(k * s.quantization_range < s.modulus_range, "secure_aggregation.quantization_range", s.quantization_range,
         f"to be below modulus_range / {k} (clients a round) = {s.modulus_range // k}, or the masked sum wraps")
    need(t.aggregation in ("mean", "weighted"), "train.aggregation", t.aggregation,
         'to be "mean" or "weighted" with secure aggregation: the server sees only the sum of the uploads, '
         "not each one (turn secure_aggregation.enabled off for robust aggregation)")
    need(t.max_update_norm is None, "train.max_update_norm", t.max_update_norm,
         "to be left out with secure aggregation: the server cannot bound an update it does not see "
         "(a client-side bound is DP-FedAvg's dp_fedavg.clip_norm)")


def published_warnings(cfg: Config) -> list[str]:
    """One line per published defect ``cfg`` turns on on purpose (empty for an honest run): shown
    when the run starts and kept in its summary."""
    out = []
    if cfg.data.test_split == "published-leaky":
        out.append('data.test_split = "published-leaky": each client\'s test split is re-drawn every round as '
                   "published, so it tests on images trained on in earlier rounds: its accuracy is NOT a test "
                   "accuracy")
    if cfg.train.optimiser == "published-shared":
        out.append('train.optimiser = "published-shared": one Adam passes from client to client as published, '
                   "an information flow between clients that a real federation does not have")
    return out


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested dicts (as parsed from TOML)."""
    return _check(_build(Config, values, ""))


def read_toml_file(path: str | Path, what: str) -> tuple[str, dict[str, Any]]:
    """The text and parsed values of a TOML file; one-line :class:`ConfigError` naming ``what``
    (e.g. ``compare file``) when it is missing, unreadable or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what[0].upper()}{what[1:]} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read {what} {path}: {exc}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Malformed TOML in {path}: {exc}") from None
    except ValueError:  # int() inside the parser: Python reads at most 4300 digits
        raise ConfigError(f"Malformed TOML in {path}: an integer with more than 4300 digits") from None
    except RecursionError:
        raise ConfigError(f"Malformed TOML in {path}: arrays or tables nested too deeply") from None


def load_config(path: str | Path | None) -> Config:
    """Load a TOML config file (``None``: the built-in defaults)."""
    if path is None:
        return config_from_dict({})
    path = Path(path)
    _, values = read_toml_file(path, "config file")
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as nested plain dicts (what ``config.toml`` holds); keys that are not set (None)
    are left out, as TOML has no null."""
    return _drop_unset(dataclasses.asdict(cfg))


def _drop_unset(table: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_unset(v) if isinstance(v, dict) else v for k, v in table.items() if v is not None}


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys, the form ``--set`` and :func:`apply_overrides` take.

    >>> flatten({"train": {"rounds": 3}, "seed": 1})
    {'train.rounds': 3, 'seed': 1}
    """
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return ``cfg`` with dotted-key overrides (``{"train.rounds": 3}``) applied and validated."""
    values = dataclasses.asdict(cfg)  # with the keys that are not set: they can be overridden too
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = values
        *parents, leaf = dotted.split(".")
        for part in parents:
            if part not in node or not isinstance(node[part], dict):
                raise _unknown(dotted, [*_ENGINE_SECTIONS, *registry.sections()])
            node = node[part]
        if leaf not in node:
            raise _unknown(dotted, list(node))
        node[leaf] = value
    return config_from_dict(_drop_unset(values))


def used_sections(cfg: Config) -> tuple[str, ...]:
    """The method and mechanism sections ``cfg`` uses (those of ``cfg.method``)."""
    return tuple(registry.method_class(cfg.method).sections())


def _run_dict(cfg: Config) -> dict[str, Any]:
    """The config as nested dicts without the sections of methods and mechanisms it does not use."""
    values = config_to_dict(cfg)
    used = set(used_sections(cfg))
    if not cfg.secure_aggregation.enabled:  # off: the section says nothing (and older runs keep their hash)
        values.pop("secure_aggregation")
    return {k: v for k, v in values.items() if k not in registry.sections() or k in used}


def dumps_config(cfg: Config) -> str:
    """The config as TOML text, exactly what ran: the engine's keys and sections and the sections
    of the method and mechanism it uses (the others would say nothing about the run)."""
    return tomli_w.dumps(_run_dict(cfg))


#: Keys outside the hash: they change speed, what a client failure does or what else is written,
#: not the experiment (failures are recorded in the run).
_UNHASHED = {"": ("name", "threads", "workers", "device", "tensorboard"), "train": ("eval_batch_size",)}


#: Engine keys added after the current hash scheme began: left out of the hash while they hold
#: their default (which keeps the earlier behaviour), so that runs made before they existed keep
#: their hash.
_LATER_KEYS = {"data": ("test_split",), "train": ("trim_fraction", "max_update_norm", "optimiser", "precision")}


def config_hash(cfg: Config) -> str:
    """A short, stable hash of the settings that define a run: the engine's (name, threads,
    workers, device, tensorboard, the evaluation batch size and the fault tolerance excluded) and
    the sections of the method and mechanism the run uses."""
    values = _run_dict(cfg)
    for key in _UNHASHED[""]:
        values.pop(key, None)
    for key in _UNHASHED["train"]:
        values["train"].pop(key, None)
    values.pop("faults", None)
    for section, keys in _LATER_KEYS.items():
        defaults = dataclasses.asdict(type(getattr(cfg, section))())
        for key in keys:
            if key in values[section] and values[section][key] == defaults[key]:
                del values[section][key]
    blob = json.dumps(values, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


#: The keys of the first hash scheme (rvepfl 0.1.0 before methods owned their settings), which
#: covered every method's section whether the run used it or not.
_LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "data_dir", "download", "split", "test_fraction", "partition", "num_clients", "subset",
             "shards_per_client", "dirichlet_alpha"),
    "train": ("rounds", "local_epochs", "batch_size", "lr", "adam_eps", "lr_decay", "lr_decay_clock",
              "client_fraction", "aggregation", "checkpoint_every"),
    "model": ("kl_weight", "sample_at_eval"),
    "nbafl": ("epsilon", "delta", "clip_norm", "exposures"),
    "dp_fedavg": ("noise_multiplier", "clip_norm", "delta"),
    "dp_sgd": ("noise_multiplier", "max_grad_norm", "delta"),
    "personal": ("head_epochs",),
}


def legacy_config_hash(cfg: Config) -> str | None:
    """The hash a run directory made before methods owned their settings recorded for ``cfg``
    (None when ``cfg`` sets something that scheme did not know, so no such run can match it).
    Such a run keeps working: on resume its next commit records :func:`config_hash`."""
    values: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed}
    for section, keys in _LEGACY_KEYS.items():
        params = getattr(cfg, section, None)
        if params is None:
            return None
        table, defaults = dataclasses.asdict(params), dataclasses.asdict(type(params)())
        if any(k not in keys and value != defaults[k] for k, value in table.items()):
            return None
        values[section] = {k: table[k] for k in keys}
    blob = json.dumps(values, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]

