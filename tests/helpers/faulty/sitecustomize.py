"""Client faults on demand, for tests: put this directory on PYTHONPATH and set
``RVEPFL_TEST_FAULTS`` to ``ROUND:CLIENT:KIND[,...]`` (KIND: ``raise``, ``die`` or ``hang``).

Python imports ``sitecustomize`` at start-up, so the engine and every worker process it spawns
(they inherit the environment) wrap :func:`rvepfl.fl.client.train_client`: the named client
of the named round raises a ValueError, SIGKILLs its own process, or sleeps for ten minutes
instead of training (first creating the file ``RVEPFL_TEST_HANG_MARK`` names, when set). With
``RVEPFL_TEST_ADVERSARY`` set (``CLIENT:KIND``, e.g. ``1:nan``) and the repository root on
PYTHONPATH too, the named client sends a corrupted upload in every round instead
(tests/helpers/adversary.py). With ``RVEPFL_TEST_HEARTBEAT`` set (seconds), a SuperNode
sends its heartbeats at that interval instead of flwr's fixed 30 s, so that the SuperLink finds a
killed node gone in about twice that. Test code only; nothing in src/ knows about it.
"""

import os

_SPEC = os.environ.get("RVEPFL_TEST_FAULTS", "")

if os.environ.get("RVEPFL_TEST_HEARTBEAT"):
    # flwr's modules copy the constant when they are imported, so it is set before any of them is;
    # importing flwr.common.constant imports none of them (flwr 1.41). The SuperLink refuses an
    # interval under flwr's HEARTBEAT_MIN_INTERVAL (10 s).
    import flwr.common.constant as _flwr_constant

    _flwr_constant.HEARTBEAT_DEFAULT_INTERVAL = int(os.environ["RVEPFL_TEST_HEARTBEAT"])

if _SPEC:
    import signal
    import time

    import rvepfl.fl.client as _client

    _FAULTS = {(int(r), int(c)): kind for r, c, kind in (item.split(":") for item in _SPEC.split(","))}
    _train_client = _client.train_client

    def _faulty_train_client(fed, model, store, initial_private, global_state, round_, client, *args):
        kind = _FAULTS.get((round_, client))
        if kind == "raise":
            raise ValueError(f"injected fault of client {client} in round {round_}")
        if kind == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "hang":
            mark = os.environ.get("RVEPFL_TEST_HANG_MARK")
            if mark:  # tells a test that the client is now hanging (e.g. to kill its node then)
                open(mark, "w").close()
            time.sleep(600)
        return _train_client(fed, model, store, initial_private, global_state, round_, client, *args)

    _client.train_client = _faulty_train_client

if os.environ.get("RVEPFL_TEST_ADVERSARY"):
    # Installed when rvepfl.fl.client is first imported, not now: the processes that never import
    # it (Flower's SuperLink, SuperExec, `flwr`) do not pay for importing torch.
    import importlib.abc
    import importlib.util
    import sys

    class _InstallAdversary(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "rvepfl.fl.client":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            exec_module = spec.loader.exec_module

            def exec_then_install(module):
                exec_module(module)
                from tests.helpers.adversary import install_from_env

                install_from_env()

            spec.loader.exec_module = exec_then_install
            return spec

    sys.meta_path.insert(0, _InstallAdversary())
