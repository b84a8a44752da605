"""Every federated method and privacy mechanism, found in their packages, and their compositions.

Nothing lists them by hand: a method is a subclass of :class:`~rvepfl.methods.base.Method` with a
``name``, defined in a module of :mod:`rvepfl.methods`; a mechanism is a subclass of
:class:`~rvepfl.mechanisms.base.Mechanism` in a module of :mod:`rvepfl.mechanisms`. A new method
is one new file, and its settings section (``Params``, ``section``) joins the config by itself.

The ``method`` key of a config names one of:

- a method (``rvepfl``, ``fedavg``, ...);
- a mechanism alone (``nbafl``, ``dp-fedavg``, ``dp-sgd``): the mechanism on the method it
  stands for (:attr:`~rvepfl.mechanisms.base.Mechanism.standalone`, FedAvg), which is what these
  names have always meant;
- ``METHOD+MECHANISM`` (``rvepfl+nbafl``): the mechanism wrapping the method, when it can.

>>> method_class("rvepfl+nbafl").sections().keys()
dict_keys(['model', 'nbafl'])
>>> method_class("nbafl").__bases__ == (mechanisms()["nbafl"], methods()["fedavg"])
True
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from rvepfl.errors import ConfigError, short_repr
from rvepfl.mechanisms.base import Mechanism
from rvepfl.methods.base import DataSpec, Method

if TYPE_CHECKING:
    from rvepfl.engine_config import RunConfig

__all__ = ["available_methods", "build_method", "discover", "mechanisms", "method_class", "methods", "sections"]

#: Config sections that belong to the engine; no method or mechanism may claim one.
RESERVED_SECTIONS = frozenset({"data", "train", "faults"})


def discover(package_name: str, base: type) -> dict[str, Any]:
    """The named subclasses of ``base`` defined in the modules of ``package_name``, by name,
    ordered by their ``rank`` then name (typed Any: each has ``base``'s class attributes)."""
    package = importlib.import_module(package_name)
    found: dict[str, Any] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package_name}.{info.name}")
        for obj in vars(module).values():
            if not (isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__
                    and "name" in vars(obj)):
                continue
            cls: Any = obj  # a subclass of base: its name and rank are base's class attributes
            if cls.name in found and found[cls.name] is not cls:
                raise RuntimeError(f"Two classes are registered as {cls.name!r}: {found[cls.name]} and {cls}")
            if "+" in cls.name:
                raise RuntimeError(f"{cls}: a name may not contain '+', got {cls.name!r}")
            found[cls.name] = cls
    return dict(sorted(found.items(), key=lambda item: (item[1].rank, item[0])))


@functools.cache
def methods() -> dict[str, type[Method]]:
    """Every federated method, by name (``rvepfl methods`` lists them in this order)."""
    found = discover("rvepfl.methods", Method)
    return {name: cls for name, cls in found.items() if not issubclass(cls, Mechanism)}


@functools.cache
def mechanisms() -> dict[str, type[Mechanism]]:
    """Every privacy mechanism, by name."""
    found = discover("rvepfl.mechanisms", Mechanism)
    clash = sorted(set(found) & set(methods()))
    if clash:
        raise RuntimeError(f"Names used by both a method and a mechanism: {clash}")
    return found


def available_methods() -> list[str]:
    """Every name the ``method`` key takes on its own: the methods, then the mechanisms alone
    (``METHOD+MECHANISM`` compositions come on top)."""
    return [*methods(), *mechanisms()]


@functools.cache
def sections() -> dict[str, type]:
    """Every settings section of every method and mechanism: section name -> its dataclass."""
    out: dict[str, type] = {}
    for cls in [*methods().values(), *mechanisms().values()]:
        for section, params in cls.sections().items():
            if section in RESERVED_SECTIONS:
                raise RuntimeError(f"{cls}: the config section [{section}] belongs to the engine")
            if out.get(section, params) is not params:
                raise RuntimeError(f"Two settings classes claim the config section [{section}]")
            out[section] = params
    return out


def _unknown(spec: str) -> ConfigError:
    first_method, first_mechanism = next(iter(methods())), next(iter(mechanisms()))
    return ConfigError(
        f"Unknown method {short_repr(spec)}: choose one of {', '.join(methods())}; a mechanism alone "
        f"({', '.join(mechanisms())}, on {next(iter(mechanisms().values())).standalone}); or METHOD+MECHANISM "
        f"(e.g. {first_method}+{first_mechanism})")


def _compose(method: type[Method], mechanism: type[Mechanism], name: str) -> type[Method]:
    reason = mechanism.cannot_wrap(method)
    if reason is not None:
        raise ConfigError(f"{mechanism.name} cannot wrap {method.name}: {reason}")
    return type(f"{mechanism.__name__}On{method.__name__}", (mechanism, method), {
        "name": name,
        "description": f"{mechanism.description}; on {method.name}",
        "bf16_parity": method.name in vars(mechanism).get("bf16_parity_on", ()),
        "__module__": __name__,
        "__doc__": f"{mechanism.__name__} wrapping {method.__name__} (``{name}``).",
    })


@functools.cache
def method_class(spec: str) -> type[Method]:
    """The class a ``method`` value names (see the module docstring); a one-line
    :class:`ConfigError` for an unknown name or a mechanism on a method it cannot wrap."""
    if not isinstance(spec, str):
        raise ConfigError(f"Expected `method` to be a string, got {short_repr(spec)}")
    known, wrappers = methods(), mechanisms()
    base_name, plus, rest = spec.partition("+")
    if not plus:
        if spec in known:
            return known[spec]
        if spec in wrappers:
            mechanism = wrappers[spec]
            return _compose(known[mechanism.standalone], mechanism, spec)
        raise _unknown(spec)
    if base_name not in known or "+" in rest:
        if base_name in wrappers:
            raise ConfigError(f"Expected METHOD+MECHANISM with a method first ({', '.join(known)}), got {spec!r}")
        if "+" in rest and base_name in known:
            raise ConfigError(f"Expected at most one mechanism in `method` (METHOD+MECHANISM), got {spec!r}")
        raise _unknown(spec)
    if rest not in wrappers:
        raise ConfigError(f"Unknown mechanism {short_repr(rest)} in method {short_repr(spec)}: choose one of "
                          f"{', '.join(wrappers)}")
    return _compose(known[base_name], wrappers[rest], spec)


def build_method(cfg: RunConfig, spec: DataSpec) -> Method:
    """The method (or composition) ``cfg.method`` names, built for ``cfg`` and the data ``spec``."""
    return method_class(cfg.method)(cfg, spec)

