"""Every attack, found in the modules of :mod:`rvepfl.attacks`.

Nothing lists them by hand: an attack is a subclass of :class:`~rvepfl.attacks.base.Attack` with
a ``name``, defined in a module of :mod:`rvepfl.attacks` (see :mod:`rvepfl.attacks.base`). The
CLI's ``rvepfl attack NAME``, the audit's and the frontier's jobs, their tables, plots and panels,
and the settings table of docs/attacks.md all follow from what each class declares; no code
outside this package's attack classes compares an attack's name.

>>> list(attacks())[:3]
['dlg', 'idlg', 'ig']
>>> attack("ig").label, attack("ig").threats
('Inverting Gradients', ('gradient', 'update', 'aggregate'))
"""

from __future__ import annotations

import functools

from rvepfl.attacks.base import Attack
from rvepfl.errors import ConfigError, short_repr
from rvepfl.registry import discover

__all__ = ["attack", "attack_names", "attacks"]


@functools.cache
def attacks() -> dict[str, Attack]:
    """One instance of every attack, by name, ordered by ``rank`` then name."""
    found = discover("rvepfl.attacks", Attack)
    for cls in found.values():
        if not cls.threats or not cls.label:
            raise RuntimeError(f"{cls}: an attack declares its threat models and its label")
    return {name: cls() for name, cls in found.items()}


def attack_names() -> tuple[str, ...]:
    """Every attack's name, in order."""
    return tuple(attacks())


def attack(name: str) -> Attack:
    """The attack ``name`` names, or a one-line :class:`ConfigError` listing the choices."""
    found = attacks().get(name) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(f"Unknown attack {short_repr(name)}: choose one of {', '.join(attacks())}")
    return found
