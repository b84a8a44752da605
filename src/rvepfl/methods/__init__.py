"""Registry of federated methods: name -> class."""

from __future__ import annotations

from rvepfl.errors import ConfigError
from rvepfl.methods.base import ClientData, DataSpec, Method, RoundContext, Upload
from rvepfl.methods.dp_fedavg import DpFedAvg
from rvepfl.methods.dp_sgd import DpSgd
from rvepfl.methods.fedavg import FedAvg
from rvepfl.methods.fedper import FedPer
from rvepfl.methods.fedrep import FedRep
from rvepfl.methods.nbafl import NbAfl
from rvepfl.methods.rvepfl import RvePfl

__all__ = [
    "ClientData",
    "DataSpec",
    "Method",
    "RoundContext",
    "Upload",
    "available_methods",
    "get_method",
]

_REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in (RvePfl, FedAvg, FedPer, FedRep, NbAfl, DpFedAvg, DpSgd)}


def available_methods() -> list[str]:
    """Names of the registered methods."""
    return list(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"Unknown method {name!r}: choose one of {', '.join(_REGISTRY)}") from None
