"""Membership inference: was an image in the training set of the model under attack?

Two attacks give every evaluated image a score, higher meaning "member":

- **loss threshold** (Yeom et al., CSF 2018): the score is minus the cross-entropy of the
  image's true label under the attacked model (:func:`loss_scores`). A model fits its training
  images better than others, so low loss suggests a member. It knows nothing of how hard each
  image is.
- **offline LiRA** (Carlini et al., S&P 2022, the offline variant, §IV-C): ``K`` reference models
  of the attacked model's architecture are trained on images that contain *none* of the
  evaluated ones, so each reference model shows how an image scores when it is *out* of the
  training set. Per image, the attack fits a Gaussian to the reference models' logit-scaled
  confidence ``phi = log(p_y / (1 - p_y))`` (:func:`logit_confidence`) and asks how unlikely the
  attacked model's ``phi`` is under it, one-sided (members score *higher*):
  :func:`lira_offline`. The per-image mean removes each image's own difficulty, which the loss
  attack cannot.

The metrics (:func:`roc_curve`, :func:`roc_auc`, :func:`tpr_at_fpr`, :func:`balanced_accuracy`,
all in :func:`membership_metrics`) take the scores and the true membership labels (1 member,
0 non-member); numpy only.

Reference models are trained centrally with plain cross-entropy and Adam
(:func:`train_reference`) and cached as safetensors files named by a digest of everything that
determines them (:func:`load_or_train_reference`).

>>> import numpy as np
>>> scores, members = np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0])
>>> roc_auc(scores, members)
0.75
>>> membership_metrics(scores, members)["balanced_accuracy"]
0.75
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.io import file_lock, load_tensors, save_tensors
from rvepfl.seeding import derive_seed, torch_generator

__all__ = ["LIRA_VARIANCES", "LiraScores", "auc_of", "balanced_accuracy", "lira_offline", "load_or_train_reference",
           "logit_confidence", "loss_scores", "membership_metrics", "model_logits", "reference_digest", "roc_auc",
           "roc_curve", "tpr_at_fpr", "train_reference"]

LIRA_VARIANCES = ("global", "per-image")
"""How :func:`lira_offline` estimates the spread of the reference models' ``phi``."""
METRIC_FPRS = {"tpr_at_0.1pct_fpr": 0.001, "tpr_at_1pct_fpr": 0.01}
"""The false-positive rates :func:`membership_metrics` reads the TPR at (Carlini et al.'s)."""
MIN_STD = 1e-6
"""Floor of the fitted standard deviation of ``phi`` (references that agree to the last digit)."""
_KIND = "rvepfl-mia-reference"
# Keys of a reference model's sub-streams within the "attack" stream of its seed.
_INIT, _ORDER = 9200, 9201


# -- metrics ---------------------------------------------------------------------------------
def _check(scores: object, members: object) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 and members as bool, 1-D and of equal length, both classes present."""
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    m = np.asarray(members.detach().cpu() if isinstance(members, torch.Tensor) else members)
    if s.ndim != 1 or m.shape != s.shape:
        raise ValueError(f"Expected `scores` and `members` to be 1-D of equal length, got shapes {s.shape} and "
                         f"{m.shape}")
    if np.isnan(s).any():
        raise ValueError("Expected `scores` without NaN, got NaN")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(f"Expected `members` of 0 (non-member) and 1 (member), got values {np.unique(m)[:5]}")
        m = m.astype(bool)
    if m.all() or not m.any():
        raise ValueError(f"Expected both members and non-members, got {int(m.sum())} members of {len(m)}")
    return s, m


def _roc_counts(s: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives (counts) and the threshold of each ROC point, from (0, 0)."""
    order = np.argsort(-s, kind="stable")
    s, m = s[order], m[order]
    # A threshold t calls "member" every score >= t: one point per distinct score (ties together).
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp, fp = np.cumsum(m)[last], np.cumsum(~m)[last]
    return np.r_[0, tp], np.r_[0, fp], np.r_[np.inf, s[last]]


def roc_curve(scores: object, members: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve of ``scores`` (higher = member) against ``members`` (1/0 or bool).

    Returns
    -------
    fpr, tpr, thresholds
        One point per distinct score, from (0, 0) (threshold +inf) to (1, 1) (the lowest score):
        calling "member" every image whose score is >= the threshold. Tied scores share a point,
        so a tie between a member and a non-member is a diagonal segment.

    >>> fpr, tpr, t = roc_curve([3, 2, 2, 1], [1, 1, 0, 0])
    >>> fpr.tolist(), tpr.tolist(), t.tolist()
    ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0], [inf, 3.0, 2.0, 1.0])
    """
    s, m = _check(scores, members)
    tp, fp, thresholds = _roc_counts(s, m)
    return fp / (~m).sum(), tp / m.sum(), thresholds


def roc_auc(scores: object, members: object) -> float:
    """Area under the ROC curve: the chance that a random member outscores a random
    non-member, a tie counting half (the Mann-Whitney U statistic over its maximum).

    >>> roc_auc([1, 1], [1, 0])
    0.5
    """
    s, m = _check(scores, members)
    return auc_of(s[m], s[~m])


def auc_of(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """:func:`roc_auc` of members' and non-members' scores given apart (both non-empty, no NaN),
    exact, through ranks: pooled scores get average ranks, R is the members' rank sum, and
    AUC = (R - m (m + 1) / 2) / (m n) for m members and n non-members.

    >>> auc_of(np.array([2.0]), np.array([2.0, 1.0]))
    0.75
    """
    pos, neg = np.asarray(member_scores, dtype=np.float64), np.asarray(nonmember_scores, dtype=np.float64)
    _, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts
    average_rank = below + (counts + 1) / 2.0  # ranks start at 1; a tie shares the mean of its ranks
    rank_sum = average_rank[inverse[: pos.size]].sum()
    return float((rank_sum - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def tpr_at_fpr(scores: object, members: object, fpr: float) -> float:
    """The largest true-positive rate among the thresholds whose false-positive rate is <= ``fpr``.

    With ``n`` non-members the false-positive rates a threshold can have are ``0, 1/n, 2/n, ...``,
    so the smallest nonzero one is ``1/n``: for ``fpr < 1/n`` this is the TPR at FPR 0 (no
    non-member may score at or above the threshold). TPR at 0.1 % FPR means something only
    with 1,000 non-members or more; with fewer it is the TPR at zero false positives.

    >>> tpr_at_fpr([4, 3, 2, 1], [1, 0, 1, 0], 0.0), tpr_at_fpr([4, 3, 2, 1], [1, 0, 1, 0], 0.5)
    (0.5, 1.0)
    """
    if not (isinstance(fpr, (int, float)) and 0.0 <= fpr <= 1.0):
        raise ValueError(f"Expected `fpr` in [0, 1], got {fpr!r}")
    s, m = _check(scores, members)
    tp, fp, _ = _roc_counts(s, m)
    allowed = math.floor(fpr * (~m).sum() + 1e-9)  # false positives within the budget, counted exactly
    return float(tp[fp <= allowed].max() / m.sum())


def balanced_accuracy(scores: object, members: object) -> float:
    """The best threshold's balanced accuracy, ``(TPR + TNR) / 2`` (0.5: chance; 1: perfect).

    The threshold is chosen on the evaluated images themselves, so this is an upper bound on
    what an attacker who must fix the threshold beforehand gets.

    >>> balanced_accuracy([4, 3, 2, 1], [1, 1, 0, 0])
    1.0
    """
    fpr, tpr, _ = roc_curve(scores, members)
    return float(np.max((tpr + 1.0 - fpr) / 2))


def membership_metrics(scores: object, members: object) -> dict[str, float | int]:
    """``auc``, ``tpr_at_0.1pct_fpr``, ``tpr_at_1pct_fpr``, ``balanced_accuracy``, ``n_members``
    and ``n_nonmembers`` of ``scores`` (higher = member) against ``members``."""
    s, m = _check(scores, members)
    out: dict[str, float | int] = {"auc": roc_auc(s, m)}
    for key, fpr in METRIC_FPRS.items():
        out[key] = tpr_at_fpr(s, m, fpr)
    out.update(balanced_accuracy=balanced_accuracy(s, m), n_members=int(m.sum()), n_nonmembers=int((~m).sum()))
    return out


# -- scores ----------------------------------------------------------------------------------
def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2 or labels.shape != (len(logits),):
        raise ValueError(f"Expected `logits` (N, classes >= 2) and `labels` (N,), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")


def model_logits(model: nn.Module, images: torch.Tensor, *, seed: int, batch_size: int = 512) -> torch.Tensor:
    """``model``'s logits of ``images`` in evaluation mode, without gradients, on the CPU.

    A model that samples at evaluation (a variational encoder that draws z) draws from torch's global
    generator seeded from ``seed`` inside a fork, so the caller's generator is left as it was and
    the same seed gives the same logits. The model's modes are restored on return.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(derive_seed(seed, "attack"))
            parts = [model(images[i: i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)]
    finally:
        for module, training in modes.items():
            module.training = training
    return torch.cat(parts)


def loss_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss attack's scores (Yeom et al. 2018): minus the cross-entropy of each true label,
    in float64.

    >>> loss_scores(torch.tensor([[0.0, 0.0]]), torch.tensor([0])).tolist() == [-math.log(2)]
    True
    """
    _check_logits(logits, labels)
    return -F.cross_entropy(logits.double(), labels.long(), reduction="none")


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LiRA's logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` per image, in float64.

    Computed from the logits without forming ``p_y``: ``phi = z_y - logsumexp_{j != y} z_j``, so it
    stays finite and exact where ``p_y`` rounds to 1 (a well-fit training image).

    >>> phi = logit_confidence(torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]), torch.tensor([0, 1]))
    >>> [round(v, 6) for v in phi.tolist()]  # p_y = 3/4 (odds 3) and 1/2 (odds 1)
    [1.098612, 0.0]
    >>> logit_confidence(torch.tensor([[60.0, 0.0, 0.0]]), torch.tensor([0])).item() > 59
    True
    """
    _check_logits(logits, labels)
    z = logits.double()
    y = labels.long()[:, None]
    others = z.scatter(1, y, -math.inf)
    return z.gather(1, y).squeeze(1) - torch.logsumexp(others, dim=1)


@dataclass(frozen=True)
class LiraScores:
    """The outcome of :func:`lira_offline`, one value per image.

    Attributes
    ----------
    scores
        ``-log(1 - Phi((phi - mean) / std))``: minus the log of the one-sided p-value of the
        attacked model's ``phi`` under the OUT Gaussian; higher = member.
    mean, std
        The fitted OUT Gaussian of ``phi`` (``std`` is one value repeated with ``variance="global"``).
    """

    scores: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def lira_offline(target_phi: object, reference_phi: object, *, variance: str = "global") -> LiraScores:
    """Offline LiRA (Carlini et al., S&P 2022): score each image by how far above the OUT
    distribution the attacked model's ``phi`` lies.

    Parameters
    ----------
    target_phi
        (N,) the attacked model's :func:`logit_confidence` of each image.
    reference_phi
        (K, N) the same for ``K >= 2`` reference models that never trained on any of the N images.
    variance
        ``"global"`` (default): one variance for every image, the within-image variance of the
        references pooled over images (the mean over images of each image's unbiased variance).
        The paper finds a global variance better when there are few reference models (with
        K = 4 a per-image variance rests on 3 degrees of freedom, and an image whose references
        happen to agree gets an absurdly narrow Gaussian), and per-image variances worth having
        only with many (dozens). ``"per-image"``: each image's own unbiased variance, for K of
        about 16 or more. Either is floored at :data:`MIN_STD` squared.

    Returns
    -------
    LiraScores
        The per-image mean is always the references' mean for that image. The score is
        ``-log(sf(z))`` with ``z = (phi - mean) / std`` and ``sf`` the standard normal's survival
        function: a monotone map of ``z``, so it ranks as the paper's one-sided test does, computed
        with ``scipy.stats.norm.logsf`` so that it does not saturate at 1 as ``Phi(z)`` would
        (members far above the OUT distribution keep distinct scores, which the TPR at low FPR
        needs).

    >>> out = lira_offline([0.0, 3.0], [[0.0, 0.0], [1.0, 1.0]])
    >>> out.mean.tolist(), [round(v, 4) for v in out.std.tolist()], [round(v, 3) for v in out.scores.tolist()]
    ([0.5, 0.5], [0.7071, 0.7071], [0.274, 8.5])
    """
    from scipy.stats import norm

    if variance not in LIRA_VARIANCES:
        raise ValueError(f"Unknown `variance` {variance!r}: choose one of {', '.join(LIRA_VARIANCES)}")
    target = np.asarray(target_phi, dtype=np.float64)
    refs = np.asarray(reference_phi, dtype=np.float64)
    if target.ndim != 1 or refs.ndim != 2 or refs.shape[1] != len(target):
        raise ValueError(f"Expected `target_phi` (N,) and `reference_phi` (K, N), got {target.shape} and {refs.shape}")
    if refs.shape[0] < 2:
        raise ValueError(f"Expected at least 2 reference models (a variance needs two), got {refs.shape[0]}")
    if not (np.isfinite(target).all() and np.isfinite(refs).all()):
        raise ValueError("Expected finite `target_phi` and `reference_phi`")
    mean = refs.mean(axis=0)
    var = refs.var(axis=0, ddof=1)
    if variance == "global":
        var = np.full_like(var, var.mean())
    std = np.sqrt(np.maximum(var, MIN_STD ** 2))
    return LiraScores(scores=-norm.logsf((target - mean) / std), mean=mean, std=std)


# -- reference models ------------------------------------------------------------------------
def train_reference(build: Callable[[], nn.Module], images: torch.Tensor, labels: torch.Tensor, *, epochs: int,
                    lr: float, batch_size: int, seed: int,
                    progress: Callable[[int, int], None] | None = None) -> nn.Module:
    """A reference model: ``build()`` trained centrally on (images, labels), returned in eval mode.

    Plain cross-entropy on the model's full forward (x to logits), Adam at ``lr`` with its other
    settings at torch's defaults, ``epochs`` passes over the images in shuffled mini-batches of
    ``batch_size`` (the last one smaller). The initial weights and anything random in the
    forward (dropout, a sampled z) come from torch's global generator seeded from ``seed``
    inside a fork, and the batch order from a generator of its own: the caller's generator is
    left as it was, and the same seed, data and thread count give the same weights.
    ``progress``, if given, is told ``(epochs done, epochs)`` after each epoch.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected `{name}` >= 1, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"Expected `lr` > 0, got {lr!r}")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"Expected as many labels as images, at least one, got {len(images)} and {len(labels)}")
    x, y = images.detach().float().cpu(), labels.detach().long().cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "attack", _INIT))
        model = build()
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        order = torch_generator(seed, "attack", _ORDER)
        model.train()
        for epoch in range(epochs):
            perm = torch.randperm(len(y), generator=order)
            for i in range(0, len(y), batch_size):
                idx = perm[i: i + batch_size]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            if progress is not None:
                progress(epoch + 1, epochs)
    return model.eval()


def reference_digest(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, dataset: str, epochs: int,
                     lr: float, batch_size: int, seed: int) -> str:
    """16 hex digits of a SHA-256 over everything that determines a reference model: the
    architecture (its state's names and shapes), the data set's name, the training images and
    labels, the recipe (epochs, lr, batch size) and the seed."""
    recipe = {
        "architecture": [[k, list(v.shape)] for k, v in model.state_dict().items()],
        "dataset": dataset, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
    }
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    h.update(images.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(labels.detach().long().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_or_train_reference(build: Callable[[], nn.Module], images: torch.Tensor, labels: torch.Tensor, *,
                            dataset: str, epochs: int, lr: float, batch_size: int, seed: int, cache: Path,
                            progress: Callable[[int, int], None] | None = None) -> tuple[nn.Module, Path, bool]:
    """The reference model :func:`train_reference` gives, read from ``cache`` if trained before.

    It is saved there as ``mia-reference-<dataset>-<digest>.safetensors`` (:func:`reference_digest`),
    so every attack with the same architecture, images, recipe and seed shares it, whatever run
    it attacks (methods that build the same model share them). Returns the model (eval mode), its file
    and whether it was read from the cache.
    """
    with torch.random.fork_rng(devices=[]):
        shape = build()  # for the digest and the expected state; its weights are not used
    digest = reference_digest(shape, images, labels, dataset=dataset, epochs=epochs, lr=lr, batch_size=batch_size,
                              seed=seed)
    path = Path(cache) / f"mia-reference-{dataset}-{digest}.safetensors"
    with file_lock(path):  # another attack process may be training the same one
        if path.is_file():  # a damaged one raises CheckpointError, naming it
            shape.load_state_dict(load_tensors(path, expected=shape.state_dict(), kind=_KIND))
            return shape.eval(), path, True
        model = train_reference(build, images, labels, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                progress=progress)
        meta = {"format": _KIND, "dataset": dataset, "epochs": str(epochs), "lr": repr(lr),
                "batch_size": str(batch_size), "seed": str(seed), "num_images": str(len(labels))}
        save_tensors(path, model.state_dict(), meta)
    return model, path, False
