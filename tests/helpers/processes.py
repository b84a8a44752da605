"""Stopping a command with SIGKILL at a chosen point of its progress output."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Sequence


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
