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
    bf16_parity_on
        The methods on which this mechanism's bf16-mixed accuracy has been measured to match
        float32's: a composition gets :attr:`~rvepfl.methods.base.Method.bf16_parity` only for
        those (a measurement of ``nbafl``, which is ``fedavg+nbafl``, says nothing of
        ``rvepfl+nbafl``). Read off the class itself, not inherited.
    """

    standalone: ClassVar[str] = "fedavg"
    bf16_parity_on: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def cannot_wrap(cls, method: type[Method]) -> str | None:
        """Why this mechanism cannot wrap ``method`` (None: it can); the reason completes the
        sentence "<mechanism> cannot wrap <method>: ..."."""
        return None
