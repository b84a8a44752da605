"""Pure maths, the lowest layer: aggregation rules, clipping and Gaussian noise, NbAFL's noise
levels, privacy accounting.

Every function here is pure: it imports nothing else of rvepfl, noise comes from an explicit
generator, and the accountant needs no stored state. The methods, the mechanisms and the engine
call these functions; nothing here calls them back.

- :mod:`rvepfl.maths.aggregate`: the streaming weighted mean, the coordinate-wise median and
  trimmed mean of model states;
- :mod:`rvepfl.maths.noise`: a state's L2 norm, clipping to a norm, Gaussian noise;
- :mod:`rvepfl.maths.nbafl_noise`: NbAFL's noise levels from (epsilon, delta, C);
- :mod:`rvepfl.maths.accounting`: epsilon of the sampled Gaussian mechanism (Opacus's RDP).
"""

from __future__ import annotations

from rvepfl.maths.accounting import rdp_epsilon
from rvepfl.maths.aggregate import RunningMean, mean_state, median_state, trimmed_mean_state
from rvepfl.maths.nbafl_noise import (
    Downlink,
    NbaflNoise,
    downlink_sigma,
    gaussian_constant,
    nbafl_noise,
    uplink_sensitivity,
    uplink_sigma,
)
from rvepfl.maths.noise import add_gaussian_noise, clip_by_l2, l2_norm

__all__ = [
    "Downlink",
    "NbaflNoise",
    "RunningMean",
    "add_gaussian_noise",
    "clip_by_l2",
    "downlink_sigma",
    "gaussian_constant",
    "l2_norm",
    "mean_state",
    "median_state",
    "nbafl_noise",
    "rdp_epsilon",
    "trimmed_mean_state",
    "uplink_sensitivity",
    "uplink_sigma",
]
