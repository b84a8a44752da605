"""Differential-privacy building blocks: mechanisms, NbAFL's noise levels, accounting.

Every function here is pure: noise comes from an explicit generator, and the accountant needs
no stored state.
"""

from __future__ import annotations

from rvepfl.privacy.accounting import rdp_epsilon
from rvepfl.privacy.mechanisms import add_gaussian_noise, clip_by_l2, l2_norm
from rvepfl.privacy.nbafl import (
    Downlink,
    NbaflNoise,
    downlink_sigma,
    gaussian_constant,
    nbafl_noise,
    uplink_sensitivity,
    uplink_sigma,
)

__all__ = [
    "Downlink",
    "NbaflNoise",
    "add_gaussian_noise",
    "clip_by_l2",
    "downlink_sigma",
    "gaussian_constant",
    "l2_norm",
    "nbafl_noise",
    "rdp_epsilon",
    "uplink_sensitivity",
    "uplink_sigma",
]
