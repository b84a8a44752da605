import torch

from rvepfl.metrics import classification_metrics, confusion_matrix


def test_confusion_matrix_counts():
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


def test_perfect_and_absent_classes():
    y = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(y, y, 10)  # classes 3..9 absent everywhere: not averaged
    assert m == {"acc": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_class_never_predicted_counts_as_zero_precision():
    # true: 0 0 1 1; predicted: 0 0 0 0 -> class 1 never predicted
    m = classification_metrics(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1]), 2)
    assert m["acc"] == 0.5
    assert m["precision"] == 0.25  # (0.5 + 0) / 2
    assert m["recall"] == 0.5  # (1 + 0) / 2
    assert abs(m["f1"] - (2 * 0.5 * 1 / 1.5) / 2) < 1e-12
