"""Parameter dataclasses: how a method or mechanism declares its settings, and how they are checked.

Each federated method and privacy mechanism owns a frozen dataclass of its settings, declared
beside its class (``RvePfl.Params``, ``NbAfl.Params``...), and the config section it is read
from (``[model]``, ``[nbafl]``...). Every field has a default and a docstring (the string
literal under it), which :func:`field_docs` reads for ``rvepfl methods`` and the config reference.
A dataclass checks its ranges in ``check(section)``, raising one-line errors built by :func:`need`.
This module depends on nothing else of rvepfl but its errors, so methods can use it without
importing the config.

>>> from rvepfl.mechanisms.dp_fedavg import DpFedAvgParams
>>> field_docs(DpFedAvgParams)["clip_norm"]
"L2 bound of each client's model update (all tensors as one vector)."
>>> check_params(DpFedAvgParams(clip_norm=-1.0), "dp_fedavg")
Traceback (most recent call last):
...
rvepfl.errors.ConfigError: Expected `dp_fedavg.clip_norm` > 0, got -1.0
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any

from rvepfl.errors import ConfigError, short_repr

__all__ = ["check_params", "field_docs", "need"]


def need(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError("Expected `key` <allowed>, got <value>")`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"Expected `{key}` {allowed}, got {short_repr(value)}")


def check_params(params: Any, section: str) -> None:
    """Run ``params.check(section)`` when the dataclass defines one (range checks)."""
    check = getattr(params, "check", None)
    if check is not None:
        check(section)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), whitespace
    folded; fields without one are left out. Inherited fields are read from their own class."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"Expected a dataclass, got {cls!r}")
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # made at run time (no source): no docs
            continue
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        statements = body.body
        for node, following in zip(statements, statements[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return {f.name: docs[f.name] for f in dataclasses.fields(cls) if f.name in docs}
