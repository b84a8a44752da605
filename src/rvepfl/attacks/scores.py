"""Scores of reconstructions against the ground truth: MSE, PSNR and SSIM in [0, 1] pixel space.

Pure functions over (N, C, H, W) float tensors in [0, 1]; every score is per image (nothing is
averaged over the batch), computed with torchmetrics' functional metrics at ``data_range=1``:

- MSE: mean over all C x H x W values of the squared difference;
- PSNR: ``10 log10(1 / MSE)`` dB; ``+inf`` for identical images (no cap: averages over images
  should skip infinite values, or report them);
- SSIM: Wang et al. (2004) with a Gaussian window of sigma 1.5 (torchmetrics' default; it sizes
  the window from sigma, 11 x 11 taps, and ignores ``kernel_size``), K1 = 0.01, K2 = 0.03. The
  images are reflection-padded by 5 pixels so the SSIM map covers the whole image (torchmetrics
  averages the full map; scikit-image crops the border off, so values differ slightly). This
  works for any image of at least 6 x 6 pixels, 28 x 28 included; smaller images are rejected.

MI-Face produces one image per class, with no single ground truth: :func:`class_scores` scores
each against the mean real image of its class and against the nearest real image of its class.

>>> import torch
>>> truth = torch.full((1, 1, 8, 8), 0.5)
>>> s = image_scores(truth + 0.1, truth)
>>> round(s["mse"].item(), 6), round(s["psnr"].item(), 4)
(0.01, 20.0)
>>> image_scores(truth, truth)["ssim"].item()
1.0
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.functional.regression import mean_squared_error

from rvepfl.data.datasets import NORMALISATION

__all__ = ["MIN_SSIM_SIZE", "class_scores", "image_scores", "to_pixels"]

#: Smallest height and width SSIM accepts (reflection padding of 5 needs more than 5 pixels).
MIN_SSIM_SIZE = 6
_SSIM_SIGMA = 1.5


def _check_images(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"Expected `{name}` to be float (N, C, H, W), got {x.dtype} of shape {tuple(x.shape)}")
    return x


def _check_pixels(name: str, x: object) -> torch.Tensor:
    x = _check_images(name, x)
    if min(x.shape[2:]) < MIN_SSIM_SIZE:
        raise ValueError(f"Expected `{name}` of at least {MIN_SSIM_SIZE} x {MIN_SSIM_SIZE} pixels (SSIM's "
                         f"Gaussian window), got {tuple(x.shape[2:])}")
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):  # NaN fails too
        raise ValueError(f"Expected `{name}` in [0, 1] pixel space, got values in "
                         f"[{x.min().item():.4g}, {x.max().item():.4g}] (de-normalise with to_pixels first)")
    return x


def _check_labels(name: str, labels: object, length: int, other: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.shape != (length,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"Expected `{name}` to be integers of shape ({length},), one per image of `{other}`, "
                         f"got {labels.dtype} of shape {tuple(labels.shape)}")
    return labels.long()


def to_pixels(x: torch.Tensor, dataset_name: str) -> torch.Tensor:
    """De-normalise model inputs (N, C, H, W) of ``dataset_name`` to [0, 1] pixels (clamped).

    Returns a new tensor; ``x`` is left as it is.

    >>> to_pixels(torch.tensor([[[[-1.0, 0.0, 10.0]]]]), "mnist").tolist()
    [[[[0.0, 0.1307000070810318, 1.0]]]]
    """
    if dataset_name not in NORMALISATION:
        raise ValueError(f"Unknown `dataset_name` {dataset_name!r}: choose one of {', '.join(NORMALISATION)}")
    x = _check_images("x", x)
    mean, std = NORMALISATION[dataset_name]
    if x.shape[1] != len(mean):
        raise ValueError(f"Expected `x` with {len(mean)} channel(s) for {dataset_name}, got {x.shape[1]}")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp_(0.0, 1.0)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # torchmetrics' MSE treats each column of (D, N) as one output: one MSE per image.
    return mean_squared_error(a.flatten(1).T, b.flatten(1).T, num_outputs=len(a)).reshape(len(a))


def image_scores(reconstructed: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image MSE, PSNR (dB) and SSIM of ``reconstructed`` against ``truth``.

    Parameters
    ----------
    reconstructed, truth
        (N, C, H, W) float images in [0, 1], of one shape, at least 6 x 6 pixels.

    Returns
    -------
    dict
        ``mse``, ``psnr`` and ``ssim``, each an (N,) tensor.
    """
    reconstructed = _check_pixels("reconstructed", reconstructed)
    truth = _check_pixels("truth", truth)
    if reconstructed.shape != truth.shape:
        raise ValueError(f"Expected `reconstructed` and `truth` of one shape, got {tuple(reconstructed.shape)} "
                         f"and {tuple(truth.shape)}")
    dtype = torch.promote_types(reconstructed.dtype, truth.dtype)
    a, b = reconstructed.to(dtype), truth.to(dtype)
    if len(a) == 0:
        empty = a.new_zeros(0)
        return {"mse": empty, "psnr": empty.clone(), "ssim": empty.clone()}
    return {
        "mse": _mse(a, b),
        "psnr": peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        # a tensor: a (tensor, image) pair comes only with return_full_image=True
        "ssim": structural_similarity_index_measure(a, b, data_range=1.0, sigma=_SSIM_SIGMA, reduction="none"),  # type: ignore[dict-item]
    }


def class_scores(
    images: torch.Tensor,
    classes: torch.Tensor,
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Score one image per class against that class's real images (MI-Face).

    Parameters
    ----------
    images
        (K, C, H, W) images in [0, 1], one per entry of ``classes``.
    classes
        (K,) integer class of each image.
    real_images
        (N, C, H, W) real images in [0, 1] (e.g. the victim's training images).
    real_labels
        (N,) their integer labels; every class in ``classes`` must occur.

    Returns
    -------
    dict
        (K,) tensors: ``mean_mse``, ``mean_psnr``, ``mean_ssim`` against the pixel-wise mean of
        the class's real images; ``nearest_mse``, ``nearest_psnr``, ``nearest_ssim`` against the
        class's real image of lowest MSE (the first such on ties), and ``nearest_index``, that
        image's row in ``real_images``.

    >>> real = torch.stack([torch.full((1, 6, 6), v) for v in (0.0, 0.4, 1.0)])
    >>> s = class_scores(torch.full((1, 1, 6, 6), 0.3), torch.tensor([0]), real, torch.tensor([0, 0, 1]))
    >>> round(s["mean_mse"].item(), 4), s["nearest_index"].item(), round(s["nearest_mse"].item(), 4)
    (0.01, 1, 0.01)
    """
    images = _check_pixels("images", images)
    real_images = _check_pixels("real_images", real_images)
    classes = _check_labels("classes", classes, len(images), "images")
    real_labels = _check_labels("real_labels", real_labels, len(real_images), "real_images")
    if images.shape[1:] != real_images.shape[1:]:
        raise ValueError(f"Expected `images` and `real_images` of one image shape, got {tuple(images.shape[1:])} "
                         f"and {tuple(real_images.shape[1:])}")
    dtype = torch.promote_types(images.dtype, real_images.dtype)
    images, real_images = images.to(dtype), real_images.to(dtype)
    real_labels = real_labels.to(real_images.device)
    means, nearest, index = [], [], []
    for k, c in enumerate(classes.tolist()):
        members = torch.nonzero(real_labels == c).flatten()
        if len(members) == 0:
            raise ValueError(f"Expected real images of every class in `classes`, got none of class {c} in "
                             "`real_labels`")
        pool = real_images.index_select(0, members)
        means.append(pool.mean(dim=0))
        distances = _mse(images[k: k + 1].expand_as(pool), pool)
        best = int(torch.argmin(distances))
        nearest.append(pool[best])
        index.append(int(members[best]))
    out: dict[str, torch.Tensor] = {}
    if len(classes):
        for prefix, reference in (("mean", torch.stack(means)), ("nearest", torch.stack(nearest))):
            for key, value in image_scores(images, reference).items():
                out[f"{prefix}_{key}"] = value
    else:
        for key in ("mean_mse", "mean_psnr", "mean_ssim", "nearest_mse", "nearest_psnr", "nearest_ssim"):
            out[key] = images.new_zeros(0)
    out["nearest_index"] = torch.tensor(index, dtype=torch.int64)
    return out
