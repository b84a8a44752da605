"""What the server accepts from a client: every upload is checked before it can reach the aggregate.

On Flower a client is a process on someone else's machine, so nothing it sends is trusted. The
server loop (:mod:`rvepfl.fl.server`) runs :func:`refusal` on every client's outcome, for every
engine; an outcome it refuses becomes a failure of kind ``rejected`` with the reason, recorded in
``metrics/client_failures.csv`` and left out of the round under the ``[faults]`` policy, exactly
as a client that died. The global state never sees it.

An outcome is accepted when

- its upload names the client the server asked;
- the upload's entries are exactly the method's shared entries (the global state's keys): an entry
  the method keeps private, such as a private encoder's, is refused whatever its shape, and so is
  any entry the server does not know;
- every entry has the global state's shape and dtype, and every value is finite;
- ``num_samples`` is a whole number >= 1 and not above the client's training split, where the
  server knows it (a client that claimed more would weigh more in a weighted mean);
- its metrics are the ones the run records, each a finite number;
- it took the local steps the method planned for it, in a finite, non-negative time.

>>> import torch
>>> expected = {"w": torch.zeros(2)}
>>> refusal(expected, {"w": torch.tensor([1.0, float("nan")])})
'`w` holds 1 NaN or infinite value'
>>> refusal(expected, {"w": torch.zeros(2), "encoder.w": torch.zeros(3)})
'it sent entries the method does not share: encoder.w'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["METRIC_KEYS", "check_outcome", "refusal"]

#: The metrics of each evaluation a client reports (those the run's CSVs record).
METRIC_KEYS = ("loss", "acc", "precision", "recall", "f1")
_EVALUATIONS = ("general", "train", "test")
_SHOWN = 3  # entries named in a message


def _names(keys: set[str]) -> str:
    shown = sorted(keys)[:_SHOWN]
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(shown) + more


def refusal(expected: Mapping[str, torch.Tensor], state: Any) -> str | None:
    """Why an uploaded state does not fit ``expected`` (the global state), or None when it fits:
    exactly its keys, each of its shape and dtype, every value finite."""
    if not isinstance(state, Mapping):
        return f"its upload is a {type(state).__name__}, not a state"
    extra, missing = set(state) - set(expected), set(expected) - set(state)
    if extra:
        return f"it sent entries the method does not share: {_names(extra)}"
    if missing:
        return f"its upload lacks shared entries: {_names(missing)}"
    for key, ref in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            return f"`{key}` is a {type(value).__name__}, not a tensor"
        if value.shape != ref.shape or value.dtype != ref.dtype:
            return (f"`{key}` has shape {tuple(value.shape)} {value.dtype}, the global state's is "
                    f"{tuple(ref.shape)} {ref.dtype}")
        bad = int((~torch.isfinite(value)).sum()) if value.is_floating_point() else 0
        if bad:
            return f"`{key}` holds {bad} NaN or infinite value{'s' if bad > 1 else ''}"
    return None


def _metrics_refusal(metrics: Any) -> str | None:
    if not isinstance(metrics, Mapping):
        return "its metrics are not a table"
    for kind in _EVALUATIONS:
        values = metrics.get(kind)
        if not isinstance(values, Mapping):
            return f"its metrics lack the {kind} evaluation"
        for key in METRIC_KEYS:
            value = values.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"its {kind} metric `{key}` is {value!r}, not a finite number"
    return None


def check_outcome(outcome: Any, *, client: int, expected: Mapping[str, torch.Tensor] | None,
                  max_samples: int | None, planned_steps: int) -> str | None:
    """Why the server refuses ``client``'s outcome of a round, or None when it accepts it (see the
    module docstring). ``outcome`` is a :class:`~rvepfl.fl.client.ClientOutcome`; ``expected``
    None: the upload was masked (secure aggregation), so it must carry no state, and its state is
    checked only in the round's aggregate (:mod:`rvepfl.flower.secagg`)."""
    upload = outcome.upload
    if upload.client != client:
        return f"its upload names client {upload.client!r}"
    if expected is None:
        if not isinstance(upload.state, Mapping) or upload.state:
            return "it sent a state in the clear under secure aggregation"
    else:
        why = refusal(expected, upload.state)
        if why is not None:
            return why
    n = upload.num_samples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return f"it claims {n!r} training samples, not a whole number >= 1"
    if max_samples is not None and n > max_samples:
        return f"it claims {n} training samples, its split holds {max_samples}"
    why = _metrics_refusal(outcome.metrics)
    if why is not None:
        return why
    if outcome.steps != planned_steps:
        return f"it reports {outcome.steps!r} local steps, the method planned {planned_steps}"
    for name in ("train_seconds", "eval_seconds"):
        value = getattr(outcome, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            return f"its {name.replace('_', ' ')} are {value!r}, not a finite number >= 0"
    return None
