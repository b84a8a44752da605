"""Experiments built on the engine: suites of runs (and attacks), the tables and plots made from them.

A suite is data: a grid of run configs (method x data set x seed) and, for an audit, the attack
jobs every run receives. ``rvepfl compare`` and ``rvepfl audit`` both load one with
:mod:`~rvepfl.experiments.spec` and run it with :mod:`~rvepfl.experiments.runner`, which writes
the tables of :mod:`~rvepfl.experiments.tables` and the figures of
:mod:`~rvepfl.experiments.plots` from the cells of :mod:`~rvepfl.experiments.results`.
"""

from rvepfl.experiments.runner import SuiteReport, run_suite
from rvepfl.experiments.spec import AuditPlan, RunSpec, Suite, load_suite

__all__ = ["AuditPlan", "RunSpec", "Suite", "SuiteReport", "load_suite", "run_suite"]
