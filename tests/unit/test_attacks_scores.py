"""Scores (MSE, PSNR, SSIM; class scores for MI-Face) and the evaluator behind attack accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from rvepfl.attacks.evaluator import Evaluator, train_evaluator
from rvepfl.attacks.scores import MIN_SSIM_SIZE, class_scores, image_scores, to_pixels
from rvepfl.data.datasets import load_dataset, to_tensor
from rvepfl.errors import CheckpointError
from rvepfl.io import save_tensors
from rvepfl.seeding import torch_generator

C1, C2 = 0.01**2, 0.03**2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine more threads oversubscribe and stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _flat(value: float, size: int = 8, n: int = 1) -> torch.Tensor:
    # float64: SSIM's variances of flat images are differences of equal numbers, exact only here
    return torch.full((n, 1, size, size), value, dtype=torch.float64)


def _ssim_of_flat(a: float, b: float) -> float:
    """SSIM of two flat images: no variance, so only the luminance term is left."""
    return (2 * a * b + C1) / (a * a + b * b + C1)


# -- image scores: golden values -----------------------------------------------------------------
def test_identical_images_score_perfectly():
    x = torch.rand(3, 1, 28, 28, generator=torch_generator(0, "attack"))
    s = image_scores(x, x.clone())
    assert torch.equal(s["mse"], torch.zeros(3))
    assert torch.isinf(s["psnr"]).all() and (s["psnr"] > 0).all()  # no cap: +inf dB
    torch.testing.assert_close(s["ssim"], torch.ones(3))


def test_hand_computed_mse_psnr_ssim():
    truth = torch.cat([_flat(0.5), _flat(0.5)])
    recon = torch.cat([_flat(0.6), _flat(0.5)])
    recon[1, :, :4] = 0.7  # half the pixels off by 0.2: MSE 0.5 * 0.04
    s = image_scores(recon, truth)
    torch.testing.assert_close(s["mse"], torch.tensor([0.01, 0.02], dtype=torch.float64))
    psnr = torch.tensor([20.0, 10 * math.log10(50.0)], dtype=torch.float64)  # 20 and 16.9897 dB
    torch.testing.assert_close(s["psnr"], psnr)
    assert s["ssim"][0].item() == pytest.approx(_ssim_of_flat(0.6, 0.5), abs=1e-9)  # 0.983609
    assert s["ssim"][1].item() < s["ssim"][0].item()


def test_scores_are_per_image_and_symmetric():
    g = torch_generator(1, "attack")
    a, b = torch.rand(4, 3, 10, 12, generator=g), torch.rand(4, 3, 10, 12, generator=g)
    batch = image_scores(a, b)
    for i in range(4):
        one = image_scores(a[i: i + 1], b[i: i + 1])
        for key in ("mse", "psnr", "ssim"):
            torch.testing.assert_close(batch[key][i: i + 1], one[key])
    torch.testing.assert_close(image_scores(b, a)["ssim"], batch["ssim"])


def test_ssim_works_at_mnist_size_and_down_to_six_pixels():
    g = torch_generator(2, "attack")
    x = torch.rand(2, 1, 28, 28, generator=g)
    noisy = (x + 0.1 * torch.randn(2, 1, 28, 28, generator=g)).clamp(0, 1)
    ssim = image_scores(noisy, x)["ssim"]
    assert ((ssim > 0.3) & (ssim < 1.0)).all()
    small = _flat(0.2, MIN_SSIM_SIZE)
    assert image_scores(small, small)["ssim"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="`reconstructed` of at least 6 x 6"):
        image_scores(_flat(0.2, 5), _flat(0.2, 5))


@pytest.mark.parametrize("recon, truth, match", [
    (_flat(0.5, 8, 2), _flat(0.5, 8, 3), "`reconstructed` and `truth` of one shape"),
    (_flat(0.5), _flat(1.5), "`truth` in \\[0, 1\\]"),
    (_flat(-0.1), _flat(0.5), "`reconstructed` in \\[0, 1\\]"),
    (_flat(math.nan), _flat(0.5), "`reconstructed` in \\[0, 1\\]"),
    (torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), "`reconstructed` to be float \\(N, C, H, W\\)"),
    (_flat(0.5).long(), _flat(0.5).long(), "`reconstructed` to be float"),
])
def test_bad_inputs_name_the_argument(recon, truth, match):
    with pytest.raises(ValueError, match=match):
        image_scores(recon, truth)


# -- to_pixels -----------------------------------------------------------------------------------
def test_to_pixels_inverts_the_normalisation():
    images = load_dataset("mnist").train_x[:16]
    x = to_tensor(images, "mnist")
    pixels = to_pixels(x, "mnist")
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)
    assert not torch.equal(x, pixels)  # the input is left as it was
    assert to_pixels(torch.full((1, 1, 2, 2), 100.0), "mnist").max().item() == 1.0  # clamped


def test_to_pixels_rejects_unknown_data_sets_and_channel_counts():
    with pytest.raises(ValueError, match="dataset_name"):
        to_pixels(torch.zeros(1, 1, 8, 8), "svhn")
    with pytest.raises(ValueError, match="3 channel"):
        to_pixels(torch.zeros(1, 1, 8, 8), "cifar10")


# -- class scores (MI-Face) ----------------------------------------------------------------------
def test_class_scores_against_mean_and_nearest_real_image():
    # Flat real images: class 0 at 0.0 and 0.4 (mean 0.2); class 1 at 1.0 and 0.7 (mean 0.85).
    real = torch.cat([_flat(0.0), _flat(1.0), _flat(0.4), _flat(0.7)])
    labels = torch.tensor([0, 1, 0, 1])
    images = torch.cat([_flat(0.8), _flat(0.3)])
    s = class_scores(images, torch.tensor([1, 0]), real, labels)
    f64 = dict(dtype=torch.float64)
    torch.testing.assert_close(s["mean_mse"], torch.tensor([0.0025, 0.01], **f64))  # 0.05^2, 0.1^2
    torch.testing.assert_close(s["nearest_mse"], torch.tensor([0.01, 0.01], **f64))  # 0.7 and 0.4
    assert s["nearest_index"].tolist() == [3, 2]
    torch.testing.assert_close(s["mean_psnr"], torch.tensor([10 * math.log10(400.0), 20.0], **f64))
    torch.testing.assert_close(s["nearest_psnr"], torch.tensor([20.0, 20.0], **f64))
    expected = [_ssim_of_flat(0.8, 0.85), _ssim_of_flat(0.3, 0.2)]
    torch.testing.assert_close(s["mean_ssim"], torch.tensor(expected, **f64), rtol=0, atol=1e-9)
    expected = [_ssim_of_flat(0.8, 0.7), _ssim_of_flat(0.3, 0.4)]
    torch.testing.assert_close(s["nearest_ssim"], torch.tensor(expected, **f64), rtol=0, atol=1e-9)


def test_class_scores_find_an_exact_copy():
    real = torch.rand(6, 1, 8, 8, generator=torch_generator(3, "attack"))  # float32 here
    labels = torch.tensor([2, 2, 2, 5, 5, 5])
    s = class_scores(real[[4]].clone(), torch.tensor([5]), real, labels)
    assert s["nearest_index"].tolist() == [4] and s["nearest_mse"].item() == 0.0
    assert math.isinf(s["nearest_psnr"].item()) and s["nearest_ssim"].item() == pytest.approx(1.0)
    assert s["mean_mse"].item() > 0


def test_class_scores_validate_their_inputs():
    real, labels = _flat(0.5, 8, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="none of class 3"):
        class_scores(_flat(0.5), torch.tensor([3]), real, labels)
    with pytest.raises(ValueError, match="`classes`"):
        class_scores(_flat(0.5), torch.tensor([0, 1]), real, labels)
    with pytest.raises(ValueError, match="`real_labels`"):
        class_scores(_flat(0.5), torch.tensor([0]), real, torch.tensor([0]))
    with pytest.raises(ValueError, match="`images` and `real_images` of one image shape"):
        class_scores(_flat(0.5, 9), torch.tensor([0]), real, labels)
    with pytest.raises(ValueError, match="`real_images` in \\[0, 1\\]"):
        class_scores(_flat(0.5), torch.tensor([0]), real * 3, labels)


# -- the evaluator -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_pixels():
    data = load_dataset("mnist")
    as_pixels = lambda images: torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    return (as_pixels(data.train_x), torch.from_numpy(data.train_y),
            as_pixels(data.test_x), torch.from_numpy(data.test_y))


@pytest.fixture(scope="module")
def mnist_evaluator(mnist_pixels):
    """The evaluator with its default settings, on 3,000 bundled MNIST training images."""
    x, y, _, _ = mnist_pixels
    return train_evaluator(x[:3000], y[:3000], num_classes=10, seed=0)


def test_evaluator_accuracy_on_bundled_mnist(mnist_pixels, mnist_evaluator):
    _, _, test_x, test_y = mnist_pixels
    assert mnist_evaluator.num_train == 2400 and mnist_evaluator.num_test == 600
    assert mnist_evaluator.accuracy >= 0.95  # measured 0.962 on its own 600 held-out images
    accuracy = (mnist_evaluator.predict(test_x) == test_y).double().mean().item()
    assert accuracy >= 0.95  # measured 0.977 on the 1,429 bundled test images


def test_evaluator_is_deterministic_for_a_seed(mnist_pixels):
    x, y, _, _ = mnist_pixels
    small = dict(num_classes=10, epochs=1, batch_size=64, width=8)
    a = train_evaluator(x[:600], y[:600], seed=3, **small)
    b = train_evaluator(x[:600], y[:600], seed=3, **small)
    c = train_evaluator(x[:600], y[:600], seed=4, **small)
    sa, sb, sc = a.network.state_dict(), b.network.state_dict(), c.network.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and a.accuracy == b.accuracy
    assert not torch.equal(sa["out.weight"], sc["out.weight"])


def test_evaluator_judges_shape_not_contrast(mnist_pixels, mnist_evaluator):
    _, _, test_x, _ = mnist_pixels
    faint = 0.2 + 0.1 * test_x[:200]  # the same digits at a tenth of the contrast, on grey
    agree = (mnist_evaluator.predict(faint) == mnist_evaluator.predict(test_x[:200])).double().mean().item()
    assert agree >= 0.95  # measured 1.0 (200 of 200)


def test_evaluator_save_and_load_round_trip(tmp_path, mnist_pixels, mnist_evaluator):
    x, _, _, _ = mnist_pixels
    path = tmp_path / "evaluator.safetensors"
    mnist_evaluator.save(path)
    loaded = Evaluator.load(path)
    assert isinstance(loaded, Evaluator) and loaded.accuracy == mnist_evaluator.accuracy
    assert (loaded.num_train, loaded.num_test, loaded.input_shape) == (2400, 600, (1, 28, 28))
    torch.testing.assert_close(loaded.logits(x[:20]), mnist_evaluator.logits(x[:20]), rtol=0, atol=0)
    save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, {"format": "rvepfl-client-state"})
    with pytest.raises(CheckpointError, match="not an rvepfl rvepfl-evaluator checkpoint"):
        Evaluator.load(tmp_path / "other.safetensors")


def test_evaluator_validates_its_inputs(mnist_pixels):
    x, y, _, _ = mnist_pixels
    with pytest.raises(ValueError, match="`images_01` in \\[0, 1\\]"):
        train_evaluator(x[:50] * 255, y[:50], num_classes=10)
    with pytest.raises(ValueError, match="`labels` of shape"):
        train_evaluator(x[:50], y[:40], num_classes=10)
    with pytest.raises(ValueError, match="`labels` in \\[0, 5\\)"):
        train_evaluator(x[:50], y[:50], num_classes=5)
    with pytest.raises(ValueError, match="test_fraction"):
        train_evaluator(x[:50], y[:50], num_classes=10, test_fraction=1.0)
    evaluator = train_evaluator(x[:100], y[:100], num_classes=10, epochs=1, width=4)
    with pytest.raises(ValueError, match="`images_01` of shape \\(N, 1, 28, 28\\)"):
        evaluator.predict(torch.zeros(2, 1, 14, 14))
