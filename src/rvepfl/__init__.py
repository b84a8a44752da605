"""rvepfl: personalised federated learning that resists model-inversion attacks."""

__version__ = "0.1.0"
