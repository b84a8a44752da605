"""rvepfl's methods on Flower's Deployment Engine (SuperLink + SuperNodes).

* :mod:`rvepfl.flower.appconfig`: the app directory and the run config <-> TOML config mapping;
* :mod:`rvepfl.flower.client`: the ClientApp (one SuperNode = one client of the partition);
* :mod:`rvepfl.flower.server`: the ServerApp, which writes the same run directory as the
  in-process engine;
* :mod:`rvepfl.flower.local`: a local federation (SuperLink and SuperNodes as processes on
  127.0.0.1) for ``rvepfl flower-local`` and the tests;
* :mod:`rvepfl.flower.tls`: a self-signed CA and server certificate for TLS on loopback.

Everything but :mod:`~rvepfl.flower.appconfig` and :mod:`~rvepfl.flower.tls` needs the
``flower`` extra (``pip install -e '.[flower]'``, flwr 1.41.0).
"""

from __future__ import annotations

from rvepfl.errors import ConfigError

__all__ = ["require_flwr"]


def require_flwr() -> None:
    """Raise a one-line :class:`ConfigError` when flwr is not installed."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ConfigError("Flower is not installed: pip install -e '.[flower]' (flwr 1.41.0)") from None
