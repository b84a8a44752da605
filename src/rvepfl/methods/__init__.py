"""Federated methods: one small class per method, each in its own module of this package.

:mod:`rvepfl.methods.base` defines the interface; every other module here holds one method,
which :mod:`rvepfl.registry` finds by itself (a new method is a new file). Privacy mechanisms,
which wrap any method, are in :mod:`rvepfl.mechanisms`.
"""

from rvepfl.methods.base import ClientData, DataSpec, Method, RoundContext, SharedPath, Upload

__all__ = ["ClientData", "DataSpec", "Method", "RoundContext", "SharedPath", "Upload"]
