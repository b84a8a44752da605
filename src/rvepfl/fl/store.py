"""Disk-backed store of each client's private state (RVE-PFL's encoders).

One safetensors file per client per round it trained in: ``clients/NNNN-rRRRR.safetensors``.
A client's current state is its newest file of a *committed* round, so a crash in the middle of
a round leaves the last complete round intact; files of an uncommitted round are removed on
resume. Only one client's state is in memory at a time, so memory stays flat as clients grow.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from rvepfl.io import flush_to_disk, load_tensors, save_tensors

__all__ = ["ClientStore", "STEP_KEY", "load_client_state"]

STEP_KEY = "__local_steps__"
_KIND = "rvepfl-client-state"
_NAME = re.compile(r"^(\d{4,})-r(\d{4,})\.safetensors$")


def load_client_state(path: str | Path, expected: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """(private state, local step count) from one client file (the store's or an exported one)."""
    ref = dict(expected)
    ref[STEP_KEY] = torch.zeros((), dtype=torch.int64)
    tensors = load_tensors(path, expected=ref, kind=_KIND)
    steps = int(tensors.pop(STEP_KEY).item())
    return tensors, steps


class ClientStore:
    """Private client states of a run, versioned by round.

    With ``deferred_flush``, :meth:`put` leaves a file's flush to disk to :meth:`flush`, which the
    engine calls from a thread of its own while the clients train on, and waits for before it
    commits the round: time its worker would otherwise spend waiting for the disk instead of
    training the next client (BENCHMARKS.md).
    """

    def __init__(self, directory: str | Path, *, config_hash: str, deferred_flush: bool = False) -> None:
        self.dir = Path(directory)
        self.config_hash = config_hash
        self.deferred_flush = deferred_flush
        self.dir.mkdir(parents=True, exist_ok=True)

    def _files(self) -> dict[int, dict[int, Path]]:
        """client -> round -> file."""
        out: dict[int, dict[int, Path]] = {}
        for path in self.dir.iterdir():
            match = _NAME.match(path.name)
            if match:
                out.setdefault(int(match[1]), {})[int(match[2])] = path
        return out

    def _path(self, client: int, round_: int) -> Path:
        return self.dir / f"{client:04d}-r{round_:04d}.safetensors"

    def latest(self, client: int, committed: int) -> Path | None:
        """The client's newest file of a round <= ``committed`` (None: never trained)."""
        rounds = [r for r in self._files().get(client, {}) if r <= committed]
        return self._path(client, max(rounds)) if rounds else None

    def get(
        self, client: int, committed: int, expected: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], int] | None:
        """(private state, local step count) of ``client`` after round ``committed``, or None."""
        path = self.latest(client, committed)
        if path is None:
            return None
        return load_client_state(path, expected)

    def put(self, client: int, round_: int, state: dict[str, torch.Tensor], steps: int) -> None:
        """Save ``client``'s state after (uncommitted) round ``round_``."""
        tensors = dict(state)
        tensors[STEP_KEY] = torch.tensor(steps, dtype=torch.int64)
        meta = {"format": _KIND, "client": str(client), "round": str(round_),
                "config_hash": self.config_hash}
        save_tensors(self._path(client, round_), tensors, meta, durable=not self.deferred_flush)

    def flush(self, client: int, round_: int) -> None:
        """Flush ``client``'s file of round ``round_`` (written with ``deferred_flush``) to disk."""
        flush_to_disk(self._path(client, round_))

    def discard(self, client: int, round_: int) -> None:
        """Forget ``client``'s state of (uncommitted) round ``round_``: it failed the round, so
        its state stays that of its last round that counted. Also removes the temporary file a
        worker killed while saving it may have left."""
        path = self._path(client, round_)
        path.unlink(missing_ok=True)
        for tmp in self.dir.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)

    def prune(self, committed: int) -> None:
        """Drop files of rounds after ``committed`` and every file older than a client's newest
        committed one."""
        for rounds in self._files().values():
            kept = [r for r in rounds if r <= committed]
            newest = max(kept) if kept else None
            for r, path in rounds.items():
                if r > committed or (newest is not None and r < newest):
                    path.unlink(missing_ok=True)

    def export(self, committed: int, clients: Iterable[int], dest: Path) -> None:
        """Hard-link (or copy) each client's state after round ``committed`` into ``dest`` as
        ``CCCC.safetensors`` (the run's checkpoints; a Flower node's export)."""
        dest.mkdir(parents=True, exist_ok=True)
        for client in clients:
            src = self.latest(client, committed)
            if src is None:
                continue
            target = dest / f"{client:04d}.safetensors"
            tmp = dest / f".{client:04d}.safetensors.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, target)
