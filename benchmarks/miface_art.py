"""IBM ART's MIFace beside rvepfl's :func:`~rvepfl.attacks.miface.mi_face`: time and scores.

Run from the repository root::

    pip install -e '.[bench]'          # IBM ART (adversarial-robustness-toolbox)
    python -m benchmarks.miface_art [--json FILE] [--iterations N]

It trains a :class:`~rvepfl.models.Classifier` briefly on bundled MNIST, then inverts all ten
classes with ART's ``MIFace`` (a ``PyTorchClassifier`` around ``nn.Sequential(model, Softmax)``,
ART's default ``batch_size=1``) and with ours, with the same max_iter, window, threshold,
learning rate, start (zeros) and bounds (the pixel range, ART's ``clip_values``). Ours runs
with ``stopping="art"``, ART's own stopping rule, so both take the same steps and should give
the same images up to float rounding; ours with its default (paper) rule is shown too, but is
not part of the speed-up. Both results are scored the same way: the victim's confidence, the
label an independent evaluator (trained on the bundled test split, which the victim never saw)
gives each image, and MSE/PSNR/SSIM against the class's mean and nearest training image.

ART's gradient call also computes the gradients of the model's parameters (it cannot know they
are not needed); freezing them beforehand makes ART about 10 % faster, which this benchmark does
not do: it measures ART as it is used by default. Timings are wall-clock after a two-step
warm-up, with ``--threads`` intra-op threads; with ``--repeats R`` each attack runs R times,
alternating, and the fastest run of each counts (all are in the JSON), which damps the noise of
a shared machine.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.attacks.evaluator import Evaluator, train_evaluator
from rvepfl.attacks.miface import MiFaceResult, mi_face
from rvepfl.attacks.scores import class_scores, to_pixels
from rvepfl.data.datasets import NORMALISATION, load_dataset, to_tensor
from rvepfl.io import write_json
from rvepfl.models import Classifier
from rvepfl.seeding import seed_torch, torch_generator

__all__ = ["art_available", "default_args", "main", "run"]

_INSTALL = "benchmarks.miface_art needs IBM ART: install it with  pip install -e '.[bench]'"
_SCORE_KEYS = ("mean_mse", "mean_psnr", "mean_ssim", "nearest_mse", "nearest_psnr", "nearest_ssim")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.miface_art", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="FILE", help="also write the results to this JSON file")
    p.add_argument("--iterations", type=int, default=1000, help="max_iter of both attacks (ART's default: 10000)")
    p.add_argument("--window-length", type=int, default=100)
    p.add_argument("--threshold", type=float, default=0.99)
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both")
    p.add_argument("--repeats", type=int, default=1,
                   help="time each attack this many times, alternating, and keep the fastest run")
    p.add_argument("--train-images", type=int, default=3000, help="bundled MNIST images to train the victim on")
    p.add_argument("--epochs", type=int, default=2, help="victim training epochs")
    p.add_argument("--seed", type=int, default=0)
    return p


def default_args(**changes: Any) -> argparse.Namespace:
    """The command's default settings, with ``changes`` applied (for ``python -m benchmarks``)."""
    args = _parser().parse_args([])
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def _train_victim(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> Classifier:
    """Classifier(1, 28, 10), Adam 1e-3, batch 64; its init and dropout draw from a forked,
    seeded global generator, so the caller's is left as it was."""
    with torch.random.fork_rng(devices=[]):
        seed_torch(seed, "init")
        model = Classifier(1, 28, 10)
        seed_torch(seed, "train")
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        order = torch_generator(seed, "sampling")
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=order)
            for i in range(0, len(y), 64):
                idx = perm[i: i + 64]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def _run_art(model: nn.Module, args: argparse.Namespace, bounds: tuple[float, float], max_iter: int):
    """ART's MIFace on all ten classes: (images as a tensor, steps per class, seconds)."""
    import numpy as np
    from art.attacks.inference.model_inversion import MIFace
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=nn.Sequential(model, nn.Softmax(dim=1)), loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
        nb_classes=10, clip_values=bounds, device_type="cpu",
    )
    steps = [0] * 10
    class_gradient = classifier.class_gradient

    def counting(x: Any, label: Any = None, **kwargs: Any) -> Any:  # one call per step of one class
        for c in np.atleast_1d(label).tolist():
            steps[int(c)] += 1
        return class_gradient(x, label, **kwargs)

    classifier.class_gradient = counting  # type: ignore[method-assign]
    attack = MIFace(classifier, max_iter=max_iter, window_length=args.window_length, threshold=args.threshold,
                    learning_rate=args.learning_rate, batch_size=1, verbose=False)
    started = time.perf_counter()
    images = attack.infer(None, y=np.arange(10))
    seconds = time.perf_counter() - started
    return torch.from_numpy(images), steps, seconds


def _ours(model: nn.Module, args: argparse.Namespace, bounds: tuple[float, float], max_iter: int,
          stopping: str, classes: Sequence[int] | None = None) -> MiFaceResult:
    return mi_face(model, 10, (1, 28, 28), classes=classes, max_iter=max_iter, window_length=args.window_length,
                   threshold=args.threshold, learning_rate=args.learning_rate, bounds=bounds, stopping=stopping)


def _report(model: nn.Module, images: torch.Tensor, steps: Sequence[int], seconds: float, evaluator: Evaluator,
            real: torch.Tensor, real_y: torch.Tensor) -> dict[str, Any]:
    """Confidence, evaluator label and class scores of ten class images (model input space)."""
    classes = torch.arange(10)
    with torch.no_grad():
        confidence = torch.softmax(model(images.float()), dim=1)[classes, classes]
    pixels = to_pixels(images.float(), "mnist")
    labels = evaluator.predict(pixels)
    scores = class_scores(pixels, classes, real, real_y)
    return {
        "seconds": seconds,
        "iterations": [int(s) for s in steps],
        "confidences": [float(v) for v in confidence],
        "evaluator_labels": [int(v) for v in labels],
        "evaluator_correct": int((labels == classes).sum()),
        "scores": {k: [float(v) for v in scores[k]] for k in _SCORE_KEYS},
        "pixels": pixels,
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _print(out: dict[str, Any], art: dict[str, Any], ours: dict[str, Any], paper: dict[str, Any]) -> None:
    s, env = out["settings"], out["environment"]
    print(f"MI-Face on Classifier(1, 28, 10) trained on {s['train_images']} bundled MNIST images "
          f"(test accuracy {out['victim_test_accuracy']:.1%}); 10 classes, max_iter {s['iterations']}, "
          f"window {s['window_length']}, threshold {s['threshold']}, learning rate {s['learning_rate']}, "
          f"start 0, bounds = pixel range")
    print(f"torch {env['torch']}, ART {env['art']}, {env['threads']} thread(s), {env['cpu']}; "
          f"evaluator held-out accuracy {out['evaluator_accuracy']:.1%}\n")
    print(f"{'':28}{'seconds':>9}{'speed-up':>10}{'steps':>8}{'mean conf':>11}{'evaluator':>11}"
          f"{'mean PSNR':>11}{'near PSNR':>11}{'near SSIM':>11}")
    for name, r, speed in (("IBM ART MIFace", art, "1.0x"),
                           ("rvepfl mi_face (ART rule)", ours, f"{out['miface_speedup_vs_art']:.1f}x"),
                           ("rvepfl mi_face (paper rule)", paper, f"{art['seconds'] / paper['seconds']:.1f}x")):
        print(f"{name:28}{r['seconds']:9.2f}{speed:>10}{sum(r['iterations']):8d}{_mean(r['confidences']):11.4f}"
              f"{r['evaluator_correct']:>8d}/10{_mean(r['scores']['mean_psnr']):11.2f}"
              f"{_mean(r['scores']['nearest_psnr']):11.2f}{_mean(r['scores']['nearest_ssim']):11.4f}")
    print(f"\n{'class':>5}  {'steps ART/ours':>15}  {'confidence ART/ours':>20}  {'evaluator ART/ours':>18}  "
          f"{'nearest PSNR ART/ours':>22}  {'paper rule: steps, conf, label':>31}")
    for c in range(10):
        print(f"{c:5d}  {art['iterations'][c]:>7d}/{ours['iterations'][c]:<7d}  "
              f"{art['confidences'][c]:>10.4f}/{ours['confidences'][c]:<9.4f}  "
              f"{art['evaluator_labels'][c]:>9d}/{ours['evaluator_labels'][c]:<8d}  "
              f"{art['scores']['nearest_psnr'][c]:>11.2f}/{ours['scores']['nearest_psnr'][c]:<10.2f}  "
              f"{paper['iterations'][c]:>17d}, {paper['confidences'][c]:.4f}, {paper['evaluator_labels'][c]}")
    print(f"\n|ART - ours| in [0, 1] pixels, all classes in one batch: mean {out['mean_abs_pixel_difference']:.1e}, "
          f"largest {out['max_abs_pixel_difference']:.1e} (float rounding of batched convolutions, grown over "
          f"the steps);\nclass 0 run alone, as ART runs it: largest difference in model input space "
          f"{out['class0_alone_max_abs_difference_vs_art']:.1e} (0 = bit-identical)")
    print(f"speed-up of ours over ART: {out['miface_speedup_vs_art']:.1f}x")


def art_available() -> bool:
    """Whether IBM ART's MIFace can be imported here."""
    try:
        from art.attacks.inference.model_inversion import MIFace  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    """Run both attacks as ``args`` say (see :func:`_parser`); return the results (JSON-ready)."""
    import art

    logging.getLogger("art").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)

    data = load_dataset("mnist")
    n = min(args.train_images, len(data.train_y))
    x, y = to_tensor(data.train_x[:n], "mnist"), torch.from_numpy(data.train_y[:n])
    log(f"training the victim on {n} images, {args.epochs} epoch(s) ...")
    model = _train_victim(x, y, args.epochs, args.seed)
    with torch.no_grad():
        test_pred = model(to_tensor(data.test_x, "mnist")).argmax(1)
    victim_accuracy = float((test_pred == torch.from_numpy(data.test_y)).double().mean())
    test_pixels = torch.from_numpy(data.test_x).permute(0, 3, 1, 2).float() / 255.0
    log("training the evaluator on the bundled test split ...")
    evaluator = train_evaluator(test_pixels, torch.from_numpy(data.test_y), num_classes=10, seed=args.seed)
    real = to_pixels(x, "mnist")

    (mean,), (std,) = NORMALISATION["mnist"]
    bounds = ((0.0 - mean) / std, (1.0 - mean) / std)
    _ours(model, args, bounds, 2, "art")  # warm-ups: first-call set-up is not timed
    _run_art(model, args, bounds, 2)
    ours_times: list[float] = []
    art_times: list[float] = []
    for r in range(args.repeats):
        log(f"run {r + 1}/{args.repeats}: ours, then IBM ART ({args.iterations} iterations each) ...")
        ours_result = _ours(model, args, bounds, args.iterations, "art")
        ours_times.append(ours_result.seconds)
        art_images, art_steps, seconds = _run_art(model, args, bounds, args.iterations)
        art_times.append(seconds)
    paper_result = _ours(model, args, bounds, args.iterations, "paper")
    art_seconds, ours_seconds = min(art_times), min(ours_times)

    art_report = _report(model, art_images, art_steps, art_seconds, evaluator, real, y)
    ours_report = _report(model, ours_result.images, ours_result.iterations.tolist(), ours_seconds,
                          evaluator, real, y)
    paper_report = _report(model, paper_result.images, paper_result.iterations.tolist(), paper_result.seconds,
                           evaluator, real, y)
    difference = (art_report.pop("pixels") - ours_report.pop("pixels")).abs()
    paper_report.pop("pixels")
    # One class on its own (batch of one, as ART runs it): the same arithmetic as ART's.
    alone = _ours(model, args, bounds, args.iterations, "art", classes=[0]).images[0]
    alone_difference = float((alone - art_images[0]).abs().max())
    return {
        "benchmark": "miface_art",
        "settings": {"iterations": args.iterations, "window_length": args.window_length,
                     "threshold": args.threshold, "learning_rate": args.learning_rate, "classes": 10,
                     "start": "zeros (model input space)", "bounds": list(bounds), "art_batch_size": 1,
                     "ours_stopping": "art", "train_images": n, "epochs": args.epochs, "seed": args.seed,
                     "repeats": args.repeats},
        "environment": {"torch": torch.__version__, "art": art.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
        "victim_test_accuracy": victim_accuracy,
        "evaluator_accuracy": evaluator.accuracy,
        "miface_speedup_vs_art": art_seconds / ours_seconds,
        "seconds_per_run": {"art": art_times, "ours": ours_times},
        "max_abs_pixel_difference": float(difference.max()),
        "mean_abs_pixel_difference": float(difference.mean()),
        "class0_alone_max_abs_difference_vs_art": alone_difference,
        "art": art_report,
        "ours": ours_report,
        "ours_paper_rule": paper_report,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not art_available():
        print(_INSTALL, file=sys.stderr)
        return 2
    if min(args.iterations, args.threads, args.epochs, args.repeats) < 1 or args.train_images < 64:
        print("Expected --iterations, --threads, --epochs, --repeats >= 1 and --train-images >= 64", file=sys.stderr)
        return 2
    out = run(args, log=lambda line: print(line, flush=True))
    print()
    _print(out, out["art"], out["ours"], out["ours_paper_rule"])
    if args.json:
        write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
