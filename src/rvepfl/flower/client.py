"""The ClientApp: one SuperNode is one client of the federation's partition.

Node config (``flower-supernode --node-config "partition-id=0 num-partitions=2 state-dir='...'"``):

``partition-id`` (required)
    The client id this node plays, 0 to ``data.num_clients`` - 1.
``num-partitions`` (required)
    Must equal ``data.num_clients``: a guard against a node started for another federation.
``state-dir`` (required)
    A node-local directory for the client's private state (RVE-PFL's encoder, FedPer's head...):
    a :class:`~rvepfl.fl.store.ClientStore` under ``<state-dir>/<run key>/``, versioned by round
    and committed by the server's round counter exactly as in the in-process engine. It never
    leaves the node: the reply to a round carries the method's upload only.
``data-dir`` (optional)
    Where this node's copy of the full data set is (overrides ``data.data_dir``, which names a
    path on the server's machine); empty: the config's.
``threads`` (optional, default 1)
    Torch CPU threads of the ClientApp.

Every node builds the federation from the run config exactly as the in-process engine does
(:func:`rvepfl.fl.client.prepare`: the same data set, subset, partition from the same seed,
method and initial model) and keeps its own client's split; the server never reads data. So
each node needs the data set (the bundled subset ships in the package). A round is
:func:`rvepfl.fl.client.train_client`, the in-process engine's own function.

Two message types:

``query``
    The node's facts: partition id, its split's indices and label counts, the data set's shape,
    and a fingerprint of the whole partition, which the server compares across nodes.
``train``
    One round: the global shared state in, the upload and the metrics out. Under
    ``[secure_aggregation]`` the round is Flower's SecAgg+ protocol: its four stages are ``train``
    messages that Flower's ``secaggplus_mod`` answers (:mod:`rvepfl.flower.secagg`), and its
    collect stage runs the round here and sends the upload weighted, quantised and masked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from rvepfl.config import config_hash
from rvepfl.errors import ConfigError
from rvepfl.fl.secure_aggregation import rounding_seed
from rvepfl.flower.appconfig import split_run_config

__all__ = ["NodeSettings", "app", "handle_query", "handle_train", "node_settings", "partition_fingerprint",
           "state_from_record"]

app = ClientApp()

# The federation built by prepare() is kept for further messages in the same process (Flower
# may start a fresh ClientApp process per message; then it is rebuilt, identically).
_cache: dict[str, Any] = {}


@dataclasses.dataclass(frozen=True)
class NodeSettings:
    partition_id: int
    num_partitions: int
    state_dir: Path
    data_dir: str
    threads: int


def node_settings(node_config: dict[str, Any]) -> NodeSettings:
    """The node config, validated (one-line :class:`ConfigError` naming the key)."""
    def get(key: str, kind: type, default: Any = None) -> Any:
        if key not in node_config:
            if default is None:
                raise ConfigError(f"SuperNode node config lacks `{key}` (--node-config \"{key}=...\")")
            return default
        value = node_config[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"Expected node config `{key}` to be an integer, got {value!r}")
        if kind is str and not isinstance(value, str):
            value = str(value)
        return value

    settings = NodeSettings(
        partition_id=get("partition-id", int),
        num_partitions=get("num-partitions", int),
        state_dir=Path(get("state-dir", str)),
        data_dir=get("data-dir", str, ""),
        threads=get("threads", int, 1),
    )
    if settings.partition_id < 0 or settings.num_partitions < 1 or settings.partition_id >= settings.num_partitions:
        raise ConfigError(f"Expected 0 <= partition-id < num-partitions, got {settings.partition_id} "
                          f"and {settings.num_partitions}")
    if settings.threads < 1:
        raise ConfigError(f"Expected node config `threads` >= 1, got {settings.threads}")
    return settings


def _federation(context: Context) -> tuple[Any, NodeSettings, str]:
    """(federation, node settings, config hash) for this node and run."""
    from rvepfl.fl.client import prepare

    settings = node_settings(dict(context.node_config))
    cfg, _ = split_run_config(dict(context.run_config))
    if settings.data_dir:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=settings.data_dir))
    if settings.num_partitions != cfg.data.num_clients:
        raise ConfigError(f"This node was started with num-partitions={settings.num_partitions}, "
                          f"the run has data.num_clients = {cfg.data.num_clients}")
    torch.set_num_threads(settings.threads)
    chash = config_hash(cfg)
    key = f"{chash}:{cfg.data.data_dir}"
    if _cache.get("key") != key:
        _cache.clear()
        _cache.update(key=key, fed=prepare(cfg))
    return _cache["fed"], settings, chash


def _request_of(msg: Message) -> Mapping[str, Any]:
    """The server's request: rvepfl's own record, or the legacy fit instructions of a round under
    secure aggregation (Flower's workflow sends those)."""
    content: Mapping[str, Any] = msg.content
    return content["fitins.config"] if "fitins.config" in content else content["request"]


def _check_hash(msg: Message, chash: str) -> None:
    sent: Any = _request_of(msg)["config-hash"]  # as the server sent it
    if sent != chash:
        raise ConfigError(f"The server's config hash {sent} differs from this node's {chash}: "
                          "the node builds another federation (data set or version differ)")


def state_from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Tensors (writable copies) from an :class:`ArrayRecord`; bytes are kept as they are."""
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


def partition_fingerprint(arrays: dict[str, np.ndarray]) -> str:
    """A short hash of a whole partition (every client's train and test indices)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name], dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def handle_query(msg: Message, context: Context) -> Message:
    """Reply with this node's facts (nothing private: indices into the shared data pool, sizes,
    label counts)."""
    fed, settings, chash = _federation(context)
    _check_hash(msg, chash)
    client = settings.partition_id
    split = fed.partition.clients[client]
    counts = fed.label_counts()[client]
    facts = ConfigRecord({
        "partition-id": client,
        "num-partitions": settings.num_partitions,
        "config-hash": chash,
        "fingerprint": partition_fingerprint(fed.partition.to_arrays()),
        "dataset": fed.dataset.name,
        "source": fed.dataset.source,
        "channels": fed.dataset.channels,
        "image-size": fed.dataset.image_size,
        "num-classes": fed.dataset.num_classes,
        "num-train-images": int(len(fed.dataset.train_y)),
        "num-test-images": int(len(fed.dataset.test_y)),
        "num-unused": int(fed.partition.num_unused),
        "train-indices": [int(i) for i in split.train],
        "test-indices": [int(i) for i in split.test],
        "train-label-counts": [int(c) for c in counts["train"]],
        "test-label-counts": [int(c) for c in counts["test"]],
    })
    return Message(RecordDict({"facts": facts}), reply_to=msg)


def handle_train(msg: Message, context: Context) -> Message:
    """One round of this node's client: :func:`~rvepfl.fl.client.train_client` on the global
    state received, private state from and to the node's store; reply with the upload only."""
    from rvepfl.fl.client import initial_model, train_client
    from rvepfl.fl.store import ClientStore

    fed, settings, chash = _federation(context)
    _check_hash(msg, chash)
    request = _request_of(msg)  # its values are checked as they are read
    secure = "fitins.config" in msg.content
    round_, committed = int(request["round"]), int(request["committed"])
    clock = int(request["clock"])
    run_key = str(request["run-key"])
    if not run_key.isalnum():
        raise ConfigError(f"Expected an alphanumeric run key, got {run_key!r}")
    client = settings.partition_id

    model, initial_private, initial_shared = initial_model(fed.method, fed.cfg.seed, fed.device)
    if secure:
        if int(request["client"]) != client:
            raise ConfigError(f"The server asked client {request['client']} of node playing client {client}")
        arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(msg.content["fitins.parameters"],  # type: ignore[arg-type]
                                                                         keep_input=True))
        if len(arrays) != len(initial_shared):
            raise ConfigError("The global state received does not fit this node's model")
        received = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in zip(sorted(initial_shared), arrays)}
    else:
        received = state_from_record(msg.content["global"])  # type: ignore[arg-type]  # an ArrayRecord
    if set(received) != set(initial_shared) or any(
            received[k].shape != v.shape or received[k].dtype != v.dtype for k, v in initial_shared.items()):
        raise ConfigError("The global state received does not fit this node's model")
    store = ClientStore(settings.state_dir / run_key, config_hash=chash)
    store.prune(committed)
    outcome = train_client(fed, model, store, initial_private, received, round_, client, committed,
                           None if clock < 0 else clock)
    if bool(request["export"]):
        # Checkpoints of the client's private state stay on the node (the server's run
        # directory gets none): in <state-dir>/<run key>/export/round_NNNN/.
        store.export(round_, [client], settings.state_dir / run_key / "export" / f"round_{round_:04d}")

    upload = outcome.upload
    metrics: dict[str, Any] = {f"{kind}.{k}": float(v) for kind, m in outcome.metrics.items() for k, v in m.items()}
    metrics.update({"steps": outcome.steps, "train-seconds": outcome.train_seconds,
                    "eval-seconds": outcome.eval_seconds})
    info = ConfigRecord({"client": upload.client, "num-samples": upload.num_samples,
                         "info-json": json.dumps(upload.info)})
    if secure:
        return _masked_reply(msg, fed, upload, MetricRecord(metrics), info, round_, client)
    content = RecordDict({
        "upload": ArrayRecord({k: v.contiguous() for k, v in upload.state.items()}),
        "metrics": MetricRecord(metrics),
        "upload-info": info,
    })
    return Message(content, reply_to=msg)


def _masked_reply(msg: Message, fed: Any, upload: Any, metrics: MetricRecord, info: ConfigRecord, round_: int,
                  client: int) -> Message:
    """The reply to the protocol's collect stage, as Flower's ``secaggplus_mod`` takes it: the
    upload's entries in sorted order as legacy fit results with the method's aggregation weight
    (the mod weighs, quantises and masks them, then empties ``fitres.parameters``), and the
    metrics and upload facts, which the server reads in the clear.

    The mod's stochastic rounding draws from NumPy's global generator, which is seeded here, the
    last thing before the mod quantises, from (seed, round, client)
    (:func:`rvepfl.fl.secure_aggregation.rounding_seed`): the in-process engine draws the same numbers."""
    keys = sorted(upload.state)
    arrays = [upload.state[k].detach().cpu().contiguous().numpy() for k in keys]
    bad = [k for k, a in zip(keys, arrays) if not np.isfinite(a).all()]
    if bad:  # the server could not see it in the masked sum: an honest client drops out instead
        raise ValueError(f"The upload holds NaN or infinite values in {', '.join(bad[:3])}: not sent")
    weight = fed.method.aggregation_weight(upload.num_samples)
    fitres = FitRes(status=Status(code=Code.OK, message=""), parameters=ndarrays_to_parameters(arrays),
                    num_examples=weight, metrics={})
    content = compat.fitres_to_recorddict(fitres, keep_input=True)
    content["metrics"] = metrics
    content["upload-info"] = info
    np.random.seed(rounding_seed(fed.cfg.seed, round_, client))
    return Message(content, reply_to=msg)


def _secure_aggregation(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's ``secaggplus_mod`` for the protocol's messages (they carry its configuration
    record); every other message goes straight to the handler."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    out: Message = call_next(msg, context)
    return out


@app.query()
def _query(msg: Message, context: Context) -> Message:
    return handle_query(msg, context)


@app.train(mods=[_secure_aggregation])
def _train(msg: Message, context: Context) -> Message:
    return handle_train(msg, context)

