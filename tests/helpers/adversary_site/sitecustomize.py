"""Put this directory (and the repository root) on PYTHONPATH with ``RVEPFL_TEST_ADVERSARY`` set:
every Python process started then, the engine's worker processes and Flower nodes included, makes
the named client misbehave (tests/helpers/adversary.py). Test and experiment code only."""

import os

if os.environ.get("RVEPFL_TEST_ADVERSARY"):
    from tests.helpers.adversary import install_from_env

    install_from_env()
