"""The base class of privacy mechanisms (see :mod:`rvepfl.mechanisms`)."""

from __future__ import annotations

from typing import ClassVar

from rvepfl.methods.base import Method

__all__ = ["Mechanism"]


class Mechanism(Method):
    """A wrapper of a federated method: a mixin whose hooks call the method's through ``super()``.

    :mod:`rvepfl.registry` builds ``class Composed(TheMechanism, TheMethod)``, so every hook the
    method calls on itself (its local training's optimiser and batches included) goes through the
    mechanism first. A mechanism defines no model of its own.

    Class attributes
    ----------------
    standalone
        The method the mechanism's name alone stands for (``nbafl`` means ``fedavg+nbafl``).
    """

    standalone: ClassVar[str] = "fedavg"

    @classmethod
    def cannot_wrap(cls, method: type[Method]) -> str | None:
        """Why this mechanism cannot wrap ``method`` (None: it can); the reason completes the
        sentence "<mechanism> cannot wrap <method>: ..."."""
        return None
