"""Experiments built on the engine: suites of runs and the tables and plots made from them."""

from rvepfl.experiments.compare import CompareReport, CompareSpec, RunSpec, load_compare, run_compare

__all__ = ["CompareReport", "CompareSpec", "RunSpec", "load_compare", "run_compare"]
