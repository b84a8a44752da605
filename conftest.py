"""Doctest collection of ``src``: the Flower apps import flwr (the ``flower`` extra), so without
it their modules are not collected (the Flower tests skip, or fail under ``.ci/run``)."""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("flwr") is None:
    collect_ignore += ["src/rvepfl/flower/client.py", "src/rvepfl/flower/server.py"]
