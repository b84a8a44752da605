"""``python -m rvepfl`` and the ``rvepfl`` console script: OpenMP's wait policy is set before
torch loads (:func:`rvepfl.perf.passive_openmp`), then the command line runs."""

from __future__ import annotations

import sys

from rvepfl.perf import passive_openmp


def main() -> int:
    """Entry point of the ``rvepfl`` command."""
    passive_openmp()
    from rvepfl.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
