"""Run the ``rvepfl`` command and SIGKILL it at an exact point of its work (test code only).

::

    RVEPFL_TEST_CRASH='{"at": "step", "round": 2, "client": 1, "step": 2}' \\
        python -m tests.helpers.crash train --resume ...

reads the point from the environment, installs the hooks below, then runs
:func:`rvepfl.cli.main` with the command-line arguments. The points (each dies the ``occurrence``-th
time, default the first, that one process reaches it):

- ``step``: after optimiser step ``step`` (from 1) of client ``client``'s local training in round
  ``round`` (inside local training);
- ``client_done``: after the engine reported the client at position ``index`` (from 0) of round
  ``round`` as done (between two clients);
- ``write``: while :mod:`rvepfl.io` writes a file whose path ends with ``file``: its temporary
  file is cut to half its length, as a write stopped midway leaves it, then the process dies
  before the rename that would commit it;
- ``call``: when the module-level function ``function`` (``"module:name"``) is called.

A point reached in a worker process (a child made by :mod:`multiprocessing`) kills the engine,
its parent, first, then the worker. Before dying, the process writes where it died to the file
named by ``RVEPFL_TEST_CRASH_MARK``, so a test can tell this kill from any other death. Worker
processes are spawned: they import this module again (as ``__mp_main__``) and so install the same
hooks. Nothing here depends on timing: the process kills itself at the point.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Any

ENV_POINT = "RVEPFL_TEST_CRASH"
ENV_MARK = "RVEPFL_TEST_CRASH_MARK"

_reached: dict[str, int] = {"count": 0}


def _die(where: str) -> None:
    """Record ``where`` in the mark file, then SIGKILL the engine (if this is a worker) and this process."""
    mark = os.environ.get(ENV_MARK)
    if mark:
        with open(mark, "w", encoding="utf-8") as fh:
            fh.write(f"{where} (pid {os.getpid()})\n")
    if multiprocessing.parent_process() is not None:
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _reach(point: dict[str, Any], where: str) -> None:
    _reached["count"] += 1
    if _reached["count"] == point.get("occurrence", 1):
        _die(where)


def _install_step(point: dict[str, Any]) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from rvepfl import registry
    from rvepfl.methods.base import Method

    current: dict[str, Any] = {}
    for cls in {Method, *registry.methods().values(), *registry.mechanisms().values()}:
        if "local_train" not in vars(cls):
            continue

        # The default binds this cls's own local_train now, not the last one of the loop.
        def local_train(self, model, data, ctx, step, _original=vars(cls)["local_train"]):  # noqa: B008
            current.update(round=ctx.round, client=ctx.client, steps=0)
            return _original(self, model, data, ctx, step)

        cls.local_train = local_train

    def after_step(optimizer, args, kwargs) -> None:
        if (current.get("round"), current.get("client")) == (point["round"], point["client"]):
            current["steps"] += 1
            if current["steps"] == point["step"]:
                _reach(point, f"step {point['step']} of client {point['client']} in round {point['round']}")

    register_optimizer_step_post_hook(after_step)


def _install_client_done(point: dict[str, Any]) -> None:
    from rvepfl.progress import ProgressPrinter

    original = ProgressPrinter.client_done

    def client_done(self, round_, index, *args, **kwargs):
        original(self, round_, index, *args, **kwargs)
        if (round_, index) == (point["round"], point["index"]):
            _reach(point, f"after client {index + 1} of round {round_}")

    ProgressPrinter.client_done = client_done


def _install_write(point: dict[str, Any]) -> None:
    from rvepfl import io

    original = io._replace

    def replace(tmp: Path, path: Path, durable: bool = True) -> None:
        if Path(path).as_posix().endswith(point["file"]):
            _reached["count"] += 1
            if _reached["count"] == point.get("occurrence", 1):
                os.truncate(tmp, os.path.getsize(tmp) // 2)
                _die(f"writing {path} ({tmp.name} cut to half)")
        original(tmp, path, durable)

    io._replace = replace


def _install_call(point: dict[str, Any]) -> None:
    module_name, _, name = point["function"].partition(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)

    def call(*args, **kwargs):
        _reach(point, f"calling {point['function']}")
        return original(*args, **kwargs)

    setattr(module, name, call)


_INSTALL = {"step": _install_step, "client_done": _install_client_done, "write": _install_write,
            "call": _install_call}


def install(point: dict[str, Any]) -> None:
    """Make this process die at ``point`` (see the module docstring)."""
    _INSTALL[point["at"]](point)


if os.environ.get(ENV_POINT):
    install(json.loads(os.environ[ENV_POINT]))

if __name__ == "__main__":
    from rvepfl.cli import main

    sys.exit(main(sys.argv[1:]))
