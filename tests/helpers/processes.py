"""Stopping a command with SIGKILL at a chosen point: of its progress output (:func:`kill_at_line`)
or of its work (:func:`run_until_crash`, which the command does to itself)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def kill_at_line(args: Sequence[str], marker: str, before_kill: Callable[[int], None] = lambda pid: None) -> int:
    """Run ``args``, SIGKILL it as soon as a stderr line contains ``marker`` (after calling
    ``before_kill`` with its pid), and return its exit status (``-SIGKILL`` if it was killed)."""
    proc = subprocess.Popen(list(args), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if marker in line:
                before_kill(proc.pid)
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


ROOT = Path(__file__).resolve().parents[2]


def run_until_crash(args: Sequence[str], point: dict, mark: Path) -> tuple[str, str]:
    """Run ``rvepfl ARGS`` under :mod:`tests.helpers.crash` with its SIGKILL at ``point``; check that
    it died there; return where (the line the dying process wrote to ``mark``) and its stderr."""
    from tests.helpers.crash import ENV_MARK, ENV_POINT

    mark.unlink(missing_ok=True)
    env = {**os.environ, ENV_POINT: json.dumps(point), ENV_MARK: str(mark), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.crash", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (
        f"expected SIGKILL at {point}, got exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    assert mark.is_file(), f"killed, but not at {point}:\n{proc.stderr[-3000:]}"
    return mark.read_text().strip(), proc.stderr
