"""Classification metrics: accuracy and macro precision, recall and F1.

Macro averages run over the classes present in the labels or the predictions (as
scikit-learn's ``average="macro"`` does); a class with no predicted (or no true) sample counts
as 0 precision (or recall), again as scikit-learn does.

>>> import torch
>>> m = classification_metrics(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
>>> round(m["acc"], 4), round(m["precision"], 4), round(m["recall"], 4), round(m["f1"], 4)
(0.75, 0.8333, 0.8333, 0.7778)
"""

from __future__ import annotations

import torch

__all__ = ["classification_metrics", "confusion_matrix"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``[true, predicted]`` as an int64 (num_classes, num_classes) tensor."""
    if pred.shape != target.shape:
        raise ValueError(
            f"Expected `pred` and `target` of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy (a fraction) and macro precision, recall and F1 of predicted labels."""
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    predicted = cm.sum(0)
    actual = cm.sum(1)
    present = (predicted + actual) > 0
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp))
    total = cm.sum().item()
    return {
        "acc": tp.sum().item() / total if total else 0.0,
        "precision": precision[present].mean().item() if present.any() else 0.0,
        "recall": recall[present].mean().item() if present.any() else 0.0,
        "f1": f1[present].mean().item() if present.any() else 0.0,
    }
