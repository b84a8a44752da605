"""The attack pool's parts that need no trained run: the cache lock, the dead-worker error, and
that one worker means no pool (the e2e audit test compares pooled and in-process scores)."""

from __future__ import annotations

import fcntl
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import pytest

from rvepfl.errors import RvepflError
from rvepfl.experiments.attack_pool import AttackPool, AttackWorkerDied, attack_pool
from rvepfl.io import file_lock


def test_the_cache_lock_is_exclusive_while_held_and_leaves_nothing_after(tmp_path):
    target = tmp_path / "cache" / "evaluator.safetensors"
    lock = tmp_path / "cache" / "evaluator.safetensors.lock"
    with file_lock(target):
        assert lock.is_file()
        with open(lock, "a+b") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not lock.exists()  # nothing is left beside the cache
    with file_lock(target):  # free again: taken at once
        assert lock.is_file()
    assert not target.exists()  # the lock never creates the file it guards


def test_a_dead_worker_is_one_line_that_names_the_job():
    future: Future = Future()
    future.set_exception(BrokenProcessPool("a child process terminated abruptly"))
    with AttackPool(2) as pool, pytest.raises(
            AttackWorkerDied, match=r"^\[mnist-fedavg-seed0\] ig \(gradient\): the attack worker process "
                                    r"died .*run the same command again to resume") as caught:
        pool.result(future, "[mnist-fedavg-seed0] ig (gradient)", print)
    assert isinstance(caught.value, RvepflError) and "\n" not in str(caught.value)


def test_a_jobs_own_error_comes_back_as_it_is():
    future: Future = Future()
    future.set_exception(RvepflError("bad checkpoint"))
    with AttackPool(2) as pool, pytest.raises(RvepflError, match="^bad checkpoint$"):
        pool.result(future, "job", print)


def test_what_the_jobs_logged_is_said_before_the_result_returns():
    """The workers' queue (filled here by this process: no job runs): lines go to ``say`` and
    in-progress lines to ``status`` in the order they came, or nowhere without a ``status``."""
    future: Future = Future()
    future.set_result({"status": "complete"})
    queued = [("line", "[a] ig (gradient): observation 1/2"), ("status", "[b] mia (released): reference 1/4"),
              ("line", "[b] mia (released): evaluator read from the cache")]
    with AttackPool(2) as pool:
        said: list[str] = []
        shown: list[str] = []
        for item in queued:
            pool._lines.put(item)
        assert pool.result(future, "[a] ig (gradient)", said.append, shown.append) == {"status": "complete"}
        assert said == [queued[0][1], queued[2][1]] and shown == [queued[1][1]]
        for item in queued:
            pool._lines.put(item)
        said.clear()
        pool.result(future, "[a] ig (gradient)", said.append)
        assert said == [queued[0][1], queued[2][1]]


def test_one_worker_is_no_pool():
    with attack_pool(1) as pool:
        assert pool is None
    with pytest.raises(ValueError, match="at least 2"):
        AttackPool(1)
