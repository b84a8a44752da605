"""Privacy mechanisms: wrappers that any federated method can be composed with.

A mechanism overrides some of a method's hooks (:class:`rvepfl.methods.base.Method`) and calls
the method's own through ``super()``: NbAFL clips and noises the upload and noises the aggregate,
DP-FedAvg clips the update and noises the aggregate, DP-SGD swaps the local optimiser and
sampler. :mod:`rvepfl.registry` composes a mechanism with a method (``rvepfl+nbafl``), and a
second one with that (``fedavg+dp-sgd+nbafl``), when the declared contract allows it
(:mod:`rvepfl.mechanisms.base`); a mechanism's name alone keeps its historical meaning, the
mechanism on FedAvg.
"""

from rvepfl.mechanisms.base import Mechanism, Need

__all__ = ["Mechanism", "Need"]
