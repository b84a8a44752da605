"""The number format of training and evaluation: ``train.precision``.

``"32"`` computes everything in float32. A *mixed* precision runs the forward pass and the loss
under :func:`torch.autocast` (matrix products and convolutions in the lower format, reductions and
losses in float32, as autocast's op lists decide) while everything that accumulates stays in
float32: the parameters (the master weights), their gradients, the optimiser's state, the uploads,
the aggregation, the privacy noise and the checkpoints. Evaluation runs under the same precision
as training.

- ``"bf16-mixed"``: bfloat16 autocast, on a CPU or a GPU. bfloat16 has float32's range, so no loss
  scaling is needed. It is fast only where the hardware has it: AMX-BF16 or AVX512-BF16 on a CPU,
  bfloat16 tensor cores on a GPU (compute capability 8.0 and up). Elsewhere the arithmetic is
  emulated, and slower than float32 (BENCHMARKS.md measures both).
- ``"16-mixed"``: float16 autocast with dynamic loss scaling (:class:`torch.amp.GradScaler`), CUDA
  only: float16's narrow range needs the scaling, and CPUs have no fast float16 arithmetic.
- ``"auto"``: ``"bf16-mixed"`` where the hardware has native bfloat16 *and* the method's
  float32 parity has been measured (:attr:`rvepfl.methods.base.Method.bf16_parity`), else
  ``"32"``. The run's summary records what ran and why.

>>> resolve("32", torch.device("cpu"), parity=False).name
'32'
>>> resolve("bf16-mixed", torch.device("cpu"), parity=False).dtype
torch.bfloat16
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rvepfl.errors import ConfigError

__all__ = ["FLOAT32", "PRECISIONS", "Precision", "PrecisionName", "cpu_bf16_flags", "native_bf16", "resolve"]

PrecisionName = Literal["32", "bf16-mixed", "16-mixed", "auto"]
PRECISIONS: tuple[str, ...] = ("32", "bf16-mixed", "16-mixed", "auto")

#: The CPU flags (Linux's /proc/cpuinfo names) of native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")

_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: what runs (``name``: ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"``),
    what the config asked for (``requested``), why the one became the other (``reason``) and
    whether the hardware emulates the format (slower than float32)."""

    name: str = "32"
    requested: str = "32"
    reason: str = "float32 asked for"
    device_type: str = "cpu"
    emulated: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast format (None: float32, no autocast)."""
        return _DTYPES.get(self.name)

    @property
    def mixed(self) -> bool:
        return self.name != "32"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass and loss under this precision (nothing changes for ``"32"``)."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler: dynamic for ``"16-mixed"``, a pass-through (disabled) otherwise."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "16-mixed")

    def summary(self) -> dict[str, Any]:
        """What the run's summary records."""
        return {"requested": self.requested, "ran": self.name, "reason": self.reason}


FLOAT32 = Precision()


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bfloat16 flags this CPU reports (Linux; empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(f for f in BF16_CPU_FLAGS if f in flags)
    return ()


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether ``device`` computes bfloat16 natively, the evidence in words)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8:
            return True, f"{name} (compute capability {major}.{minor}) has bfloat16 tensor cores"
        return False, f"{name} (compute capability {major}.{minor}) has no bfloat16 tensor cores (8.0 and up)"
    flags = cpu_bf16_flags()
    if flags:
        return True, f"this CPU has {' and '.join(flags)}"
    return False, f"this CPU has no native bfloat16 ({' or '.join(BF16_CPU_FLAGS)})"


def resolve(requested: str, device: torch.device, *, parity: bool, method: str = "the method") -> Precision:
    """The precision that runs for ``requested`` on ``device``; ``parity``: whether ``method``'s
    bf16-mixed parity with float32 has been measured (BENCHMARKS.md). A one-line
    :class:`ConfigError` for ``"16-mixed"`` off CUDA."""
    kind = device.type
    if requested == "32":
        return Precision("32", requested, "float32 asked for", kind)
    if requested == "16-mixed":
        if kind != "cuda":
            raise ConfigError('Expected a CUDA device for `train.precision = "16-mixed"` (float16 with loss '
                              f'scaling), got {kind}: use "bf16-mixed" or "32" on a CPU')
        return Precision("16-mixed", requested, "float16 mixed precision asked for", kind)
    native, evidence = native_bf16(device)
    if requested == "bf16-mixed":
        why = "bfloat16 mixed precision asked for; " + (evidence if native else
                                                         f"{evidence}: it is emulated, and slower than float32")
        return Precision("bf16-mixed", requested, why, kind, emulated=not native)
    if requested != "auto":
        raise ConfigError(f"Unknown precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if not native:
        return Precision("32", requested, f"auto: {evidence}", kind)
    if not parity:
        return Precision("32", requested, f"auto: {evidence}, but {method}'s bf16-mixed accuracy has not been "
                                          "measured against float32 (BENCHMARKS.md, the parity table)", kind)
    return Precision("bf16-mixed", requested, f"auto: {evidence}, and {method}'s bf16-mixed parity with float32 "
                                              "is measured (BENCHMARKS.md)", kind)
