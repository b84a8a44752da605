"""Test collection for the whole repository.

- Doctests of ``src``: the Flower apps import flwr (the ``flower`` extra), so without it their
  modules are not collected (the Flower tests skip, or fail under ``.ci/run``).
- Markers (pyproject.toml): ``slow`` tests run by default and are left out by
  ``-m "not slow"`` (the fast tier); ``gpu`` tests skip without a CUDA device and ``download``
  tests skip unless ``RVEPFL_TEST_DOWNLOADS=1``, so that ``-m`` stays free for the tiers.
"""

import importlib.util
import os

import pytest

collect_ignore = []
if importlib.util.find_spec("flwr") is None:
    collect_ignore += ["src/rvepfl/flower/client.py", "src/rvepfl/flower/server.py"]


def pytest_collection_modifyitems(config, items):
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    no_downloads = pytest.mark.skip(reason="needs the internet: set RVEPFL_TEST_DOWNLOADS=1")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "download" in item.keywords and os.environ.get("RVEPFL_TEST_DOWNLOADS") != "1":
            item.add_marker(no_downloads)
