"""Benchmarks that compare rvepfl with reference implementations (run with ``python -m``)."""
