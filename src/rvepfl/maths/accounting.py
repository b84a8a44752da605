"""Privacy accounting: a thin wrapper around Opacus's RDP accountant.

The maths is Opacus's (``opacus.accountants.analysis.rdp``: the RDP of the sampled Gaussian
mechanism, Mironov et al. 2019, converted to (epsilon, delta)-DP as Opacus's ``RDPAccountant``
does, over its default orders). Epsilon depends only on (noise multiplier, sample rate, steps,
delta), so callers need no stored accountant state: a resumed run recomputes it from the
number of steps completed.

>>> round(rdp_epsilon(noise_multiplier=1.0, sample_rate=1.0, steps=10, delta=1e-5), 4)
19.0536
>>> rdp_epsilon(noise_multiplier=1.0, sample_rate=0.5, steps=0, delta=1e-5)
0.0
>>> rdp_epsilon(noise_multiplier=0.0, sample_rate=0.5, steps=3, delta=1e-5)
inf
"""

from __future__ import annotations

import math
from functools import lru_cache

__all__ = ["rdp_epsilon"]


def rdp_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon after ``steps`` sampled Gaussian steps (Opacus RDP accountant).

    Parameters
    ----------
    noise_multiplier
        Noise std / L2 sensitivity (0: no noise, epsilon is infinite).
    sample_rate
        Poisson sampling probability of each record (1: every record every step).
    steps
        Number of steps (compositions).
    delta
        Target delta.

    Returns
    -------
    float
        Epsilon; ``0.0`` for no steps, ``math.inf`` without noise.
    """
    if not (isinstance(noise_multiplier, (int, float)) and math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"Expected `noise_multiplier` >= 0, got {noise_multiplier!r}")
    if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
        raise ValueError(f"Expected `sample_rate` in (0, 1], got {sample_rate!r}")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise ValueError(f"Expected `steps` to be an integer >= 0, got {steps!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"Expected `delta` in (0, 1), got {delta!r}")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    return _epsilon(float(noise_multiplier), float(sample_rate), steps, float(delta))


@lru_cache(maxsize=1024)
def _epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    # Cached: the RDP of a subsampled mechanism is slow to compute (BENCHMARKS.md, "Figures measured
    # once"), and clients of equal size share it. Opacus is imported here, not at module level:
    # importing it is slow too.
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
    eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)
