"""FedRep (Collins et al., 2021): FedPer's split, with the head and the body trained in turn.

Each round a client first trains its private head alone for ``personal.head_epochs`` epochs with
the shared body frozen, then the body alone for ``train.local_epochs`` epochs with the head
frozen; each phase has a fresh Adam. Both phases draw their batch orders, one permutation per
epoch, from the same stream of this round and client, and the learning-rate decay counts the
steps of both.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rvepfl.methods.base import ClientData, Contract, RoundContext
from rvepfl.methods.fedper import FedPer
from rvepfl.params import need

__all__ = ["FedRep", "PersonalParams"]


@dataclass(frozen=True)
class PersonalParams:
    head_epochs: int = 1
    """FedRep: local epochs of the private head before the shared body's epochs."""

    def check(self, section: str) -> None:
        need(self.head_epochs >= 0, f"{section}.head_epochs", self.head_epochs, ">= 0")


class FedRep(FedPer):
    name = "fedrep"
    description = "FedRep: private head trained first, then the shared body (Collins et al., 2021)"
    rank = 30
    Params = PersonalParams
    section = "personal"
    contract = Contract(loop="phased", private=True)

    def planned_steps(self, num_samples: int) -> int:
        personal = self.settings(PersonalParams)
        epochs = personal.head_epochs + self.cfg.train.local_epochs
        return epochs * self.batches_per_epoch(num_samples)

    def local_train(self, model: nn.Module, data: ClientData, ctx: RoundContext, step: int) -> int:
        """Head epochs (body frozen), then body epochs (head frozen)."""
        model.train()
        head = [p for k, p in model.named_parameters() if not self.is_shared(k)]
        body = [p for k, p in model.named_parameters() if self.is_shared(k)]
        generator = self.batch_generator(ctx)
        personal = self.settings(PersonalParams)
        step = self.train_epochs(model, data, head, personal.head_epochs, generator, step, ctx)
        return self.train_epochs(model, data, body, self.cfg.train.local_epochs, generator, step, ctx)
