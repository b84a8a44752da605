"""FedPer (Arivazhagan et al., 2019): the classifier's body shared and averaged, its head private.

The :class:`~rvepfl.models.Classifier` on raw images splits into a *body* (``conv1``, ``conv2``,
``dense``), which the server averages as FedAvg does, and a *head* (``out``), which never leaves
the client. Clients train body and head together; only :meth:`FedPer.is_shared` differs from
FedAvg.
"""

from __future__ import annotations

from rvepfl.methods.base import Contract
from rvepfl.methods.fedavg import FedAvg

__all__ = ["HEAD_PREFIX", "FedPer"]

HEAD_PREFIX = "out."
"""State entries of the private head; every other entry belongs to the shared body."""


class FedPer(FedAvg):
    name = "fedper"
    description = "FedPer: classifier body shared and averaged, head private (Arivazhagan et al., 2019)"
    rank = 20
    contract = Contract(private=True)

    def is_shared(self, key: str) -> bool:
        return not key.startswith(HEAD_PREFIX)
