"""Which `tf.distribute` strategy a distillation runs under, and this process's place in it.

- `auto`: `MirroredStrategy` over the visible GPUs when there are two or more, else the default
  strategy (one device).
- `default`: the default strategy, whatever the hardware.
- `mirrored`: `MirroredStrategy` over every local GPU (the CPU when there is none).
- `multiworker`: `MultiWorkerMirroredStrategy` from `TF_CONFIG`; one process per machine, all started
  with the same command. Worker 0 (or the task of type `chief`) is the chief: it fine-tunes the
  teacher and writes checkpoints, state and the bundle. Every worker scores its own shard of the
  transfer set into the shared cache folder.

A multi-worker strategy must be created before TensorFlow runs any op, so `make_cluster` comes first.
A worker that dies makes the collectives of the others fail (gRPC "Socket closed", or TF's peer
health check aborting them): `lost_worker` turns those errors into one clear message.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re

import xtremedistil  # noqa: F401  (Keras 2 guard before TensorFlow)
import tensorflow as tf

from xtremedistil.errors import XtremeDistilError

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


class WorkerLostError(XtremeDistilError):
    """A peer of a multi-worker run stopped answering; the run must be restarted on every worker."""

    exit_code = 1


@dataclasses.dataclass
class Cluster:
    strategy: tf.distribute.Strategy
    name: str
    worker: int = 0
    workers: int = 1

    @property
    def is_chief(self) -> bool:
        return self.worker == 0

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def scope(self):
        return self.strategy.scope()

    def barrier(self, what: str) -> None:
        """Returns once every worker has reached the same barrier (no-op with one worker)."""
        if self.workers > 1:
            logger.info("worker %d: waiting for the other workers (%s)", self.worker, what)
            with lost_worker(self, what):
                self.agree(0.0)

    def agree(self, value: float) -> float:
        """The mean of `value` over workers: the same number on every worker (for shared decisions)."""
        if self.workers == 1:
            return float(value)
        per_replica = self.strategy.run(lambda: tf.constant(float(value), tf.float32))
        total = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
        return float(total)

    def describe(self) -> str:
        role = "chief" if self.is_chief else "worker"
        return (f"strategy {self.name}: {self.replicas} replica(s)"
                + (f", worker {self.worker} of {self.workers} ({role})" if self.workers > 1 else ""))


def _worker_from_tf_config() -> tuple[int, int]:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise XtremeDistilError(
            "--strategy multiworker needs TF_CONFIG, e.g. "
            "'{\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' "
            "(see README, Scaling out)")
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError) as err:
        raise XtremeDistilError(f"TF_CONFIG is not valid: {err!r}; it needs cluster.worker (a list of host:port) "
                                "and task.type/task.index") from err
    if kind not in ("chief", "worker"):
        raise XtremeDistilError(f"TF_CONFIG task.type '{kind}' is not supported; use 'worker' (or 'chief')")
    size = len(chiefs) + len(workers)
    position = index if kind == "chief" else len(chiefs) + index
    if len(chiefs) > 1 or not 0 <= position < size or (kind == "chief" and index != 0):
        raise XtremeDistilError(f"TF_CONFIG task {kind}:{index} is not in its cluster of {size} task(s)")
    return position, size


def make_cluster(name: str = "auto") -> Cluster:
    """The strategy named by `--strategy`; call before any other TensorFlow work."""
    if name not in STRATEGIES:
        raise XtremeDistilError(f"--strategy '{name}' is not one of {', '.join(STRATEGIES)}")
    if name == "multiworker":
        worker, workers = _worker_from_tf_config()
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as err:
            raise XtremeDistilError(f"--strategy multiworker: {str(err).splitlines()[0]} "
                                    "(the strategy must be created before TensorFlow runs anything)") from err
        cluster = Cluster(strategy, name, worker, workers)
    elif name == "mirrored" or (name == "auto" and len(tf.config.list_physical_devices("GPU")) > 1):
        cluster = Cluster(tf.distribute.MirroredStrategy(), "mirrored")
    else:
        cluster = Cluster(tf.distribute.get_strategy(), "default")
    logger.info(cluster.describe())
    return cluster


_LOST = (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError,
         tf.errors.AbortedError, tf.errors.InternalError, tf.errors.FailedPreconditionError)


def _detail(message: str) -> str:
    """The readable part of a collective error: what aborted it, without TF's node names."""
    message = re.sub(r"\{\{[^}]*\}\}", "", message)
    if "aborted by:" in message:
        message = message.split("aborted by:", 1)[1]
    line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return line[:160]


@contextlib.contextmanager
def lost_worker(cluster: Cluster, what: str):
    """Turns the errors a dead peer causes in collectives into a `WorkerLostError`."""
    try:
        yield
    except _LOST as err:
        if cluster.workers == 1:
            raise
        detail = _detail(str(err)) or type(err).__name__
        raise WorkerLostError(
            f"worker {cluster.worker}: another worker stopped answering during {what} ({detail}); "
            "completed sub-stages and cache chunks are intact: restart every worker with the same command "
            "to resume") from err
