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
- ``METHOD+MECHANISM`` (``rvepfl+nbafl``): the mechanism wrapping the method, when it can;
- ``METHOD+MECHANISM+MECHANISM...`` (``fedavg+dp-sgd+nbafl``): each mechanism wrapping what its
  left names, when it can.

Whether a mechanism can wrap a class is decided by the class's declared contract
(:class:`~rvepfl.methods.base.Contract`) and the mechanism's needs
(:meth:`~rvepfl.mechanisms.base.Mechanism.refusal`); docs/architecture.md has the table.

>>> method_class("rvepfl+nbafl").sections().keys()
dict_keys(['model', 'nbafl'])
>>> method_class("nbafl").__bases__ == (mechanisms()["nbafl"], methods()["fedavg"])
True
>>> method_class("fedavg+dp-sgd+nbafl").mechanisms
('dp-sgd', 'nbafl')
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
        f"({', '.join(mechanisms())}, on {next(iter(mechanisms().values())).standalone}); or "
        f"METHOD+MECHANISM[+MECHANISM...] (e.g. {first_method}+{first_mechanism})")


def _compose(inner: type[Method], mechanism: type[Mechanism], name: str) -> type[Method]:
    """``mechanism`` wrapping ``inner`` (a method, or a method already wrapped), named ``name``, when
    the mechanism's needs accept ``inner``'s contract; else a one-line :class:`ConfigError`."""
    if mechanism.name in inner.mechanisms:
        raise ConfigError(f"{mechanism.name} appears twice in method {name!r}: name each mechanism once")
    reason = mechanism.refusal(inner.contract)
    if reason is not None:
        raise ConfigError(f"{mechanism.name} cannot wrap {inner.name}: {reason}")
    return type(f"{mechanism.__name__}On{inner.__name__}", (mechanism, inner), {
        "name": name,
        "description": f"{mechanism.description}; on {inner.name}",
        "contract": mechanism.wrapped(inner.contract),
        "mechanisms": (*inner.mechanisms, mechanism.name),
        "bf16_parity": not inner.mechanisms and inner.name in vars(mechanism).get("bf16_parity_on", ()),
        "__module__": __name__,
        "__doc__": f"{mechanism.__name__} wrapping {inner.__name__} (``{name}``).",
    })


@functools.cache
def method_class(spec: str) -> type[Method]:
    """The class a ``method`` value names (see the module docstring); a one-line
    :class:`ConfigError` for an unknown name or a mechanism that cannot wrap what it is named after."""
    if not isinstance(spec, str):
        raise ConfigError(f"Expected `method` to be a string, got {short_repr(spec)}")
    known, wrappers = methods(), mechanisms()
    inner, plus, last = spec.rpartition("+")
    if not plus:
        if spec in known:
            return known[spec]
        if spec in wrappers:
            mechanism = wrappers[spec]
            return _compose(known[mechanism.standalone], mechanism, spec)
        raise _unknown(spec)
    first = spec.partition("+")[0]
    if first not in known:
        if first in wrappers:
            raise ConfigError(f"Expected METHOD+MECHANISM with a method first ({', '.join(known)}), got {spec!r}")
        raise _unknown(spec)
    wrapped = method_class(inner)
    if last not in wrappers:
        raise ConfigError(f"Unknown mechanism {short_repr(last)} in method {short_repr(spec)}: choose one of "
                          f"{', '.join(wrappers)}")
    return _compose(wrapped, wrappers[last], spec)


def build_method(cfg: RunConfig, spec: DataSpec) -> Method:
    """The method (or composition) ``cfg.method`` names, built for ``cfg`` and the data ``spec``."""
    return method_class(cfg.method)(cfg, spec)

