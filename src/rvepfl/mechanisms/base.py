"""The base class of privacy mechanisms and their composition contract (see :mod:`rvepfl.mechanisms`).

A method declares what it is (:class:`~rvepfl.methods.base.Contract`); a mechanism declares what
it needs of that (:attr:`Mechanism.needs`), what it makes of it (:attr:`Mechanism.gives`) and
which hooks it overrides (:attr:`Mechanism.hooks`). Whether a mechanism can wrap a method, or a
method already wrapped, is decided by those declarations alone: :meth:`Mechanism.refusal`.
``tests/unit/test_contract.py`` checks every declaration against what the classes do, and trains
or refuses every method x mechanism pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from rvepfl.methods.base import Contract, Method

__all__ = ["Mechanism", "Need"]


@dataclass(frozen=True)
class Need:
    """A mechanism's condition on the contract of what it wraps: ``field`` must be one of
    ``allowed``; ``reason`` completes the sentence "<mechanism> cannot wrap <method>: ..."."""

    field: str
    allowed: tuple[Any, ...]
    reason: str

    def __post_init__(self) -> None:
        if self.field not in {f.name for f in dataclasses.fields(Contract)}:
            raise TypeError(f"Expected a field of Contract, got {self.field!r}")


class Mechanism(Method):
    """A wrapper of a federated method: a mixin whose hooks call the method's through ``super()``.

    :mod:`rvepfl.registry` builds ``class Composed(TheMechanism, TheMethod)``, so every hook the
    method calls on itself (its local training's optimiser and batches included) goes through the
    mechanism first; a second mechanism wraps that composition the same way
    (``fedavg+dp-sgd+nbafl``). A mechanism defines no model of its own.

    The contract
    ------------
    hooks
        The hooks of :class:`~rvepfl.methods.base.Method` this mechanism overrides, and no other
        (tested). Each calls the wrapped class's through ``super()``, except where a need says
        the wrapped class keeps the default (DP-FedAvg replaces the mean of ``aggregate``, so it
        needs ``server = "mean"``).
    needs
        Conditions on the wrapped contract; the first one that fails is the refusal's reason.
    gives
        The contract fields this mechanism sets on the composition (the rest are the wrapped
        class's).
    state
        A mechanism's instance attributes begin with its ``section`` and an underscore
        (``self.nbafl_noise``), so that it never overwrites the method's or another mechanism's
        (tested on every composition).
    summary
        :meth:`mechanism_summary` gives its own facts; in summary.json's ``method_details`` they
        stand beside the method's, or under the mechanism's section when several are stacked.

    Class attributes
    ----------------
    standalone
        The method the mechanism's name alone stands for (``nbafl`` means ``fedavg+nbafl``).
    bf16_parity_on
        The methods on which this mechanism's bf16-mixed accuracy has been measured to match
        float32's: a composition gets :attr:`~rvepfl.methods.base.Method.bf16_parity` only for
        those (a measurement of ``nbafl``, which is ``fedavg+nbafl``, says nothing of
        ``rvepfl+nbafl``), and a stack of mechanisms never. Read off the class itself, not inherited.
    """

    standalone: ClassVar[str] = "fedavg"
    bf16_parity_on: ClassVar[tuple[str, ...]] = ()
    hooks: ClassVar[frozenset[str]] = frozenset()
    needs: ClassVar[tuple[Need, ...]] = ()
    gives: ClassVar[dict[str, Any]] = {}

    @classmethod
    def refusal(cls, contract: Contract) -> str | None:
        """Why this mechanism cannot wrap a class with ``contract`` (None: it can)."""
        for need in cls.needs:
            if getattr(contract, need.field) not in need.allowed:
                return need.reason
        return None

    @classmethod
    def wrapped(cls, contract: Contract) -> Contract:
        """The contract of this mechanism wrapping a class with ``contract``."""
        return dataclasses.replace(contract, **cls.gives)

    def mechanism_summary(self) -> dict[str, Any]:
        """This mechanism's facts for summary.json (noise levels, budgets...)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """The method's facts and each mechanism's (:meth:`mechanism_summary`): beside the
        method's for one mechanism, under each one's section for a stack (their keys overlap)."""
        details = super().summary()
        own = [klass for klass in reversed(type(self).__mro__)
               if issubclass(klass, Mechanism) and klass is not Mechanism and "mechanism_summary" in vars(klass)]
        if len(own) == 1:
            return {**details, **own[0].mechanism_summary(self)}
        return {**details, **{str(klass.section): klass.mechanism_summary(self) for klass in own}}
