"""tf.distribute strategies by name, and who writes files in a multi-worker job.

The gathering of negatives across replicas lives in losses.py (it needs nothing
of ours, and losses imports nothing of ours).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from samtone_tf.options import STRATEGIES



def make_strategy(name="default", cpu_replicas=None, tpu=None):
    """A tf.distribute strategy.

    default       one device (the first GPU if any, else the CPU)
    mirrored      all local GPUs; with no GPU, `cpu_replicas` logical CPU devices
    multi_worker  MultiWorkerMirroredStrategy from $TF_CONFIG
    tpu           TPUStrategy on the TPU named by `tpu` ("" or "local" for a TPU VM)

    `cpu_replicas` splits the CPU into that many logical devices; it must be called
    before TensorFlow initialises its devices (i.e. before any other TF work).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {name!r}")
    if cpu_replicas:
        split_cpu(cpu_replicas)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("strategy multi_worker needs $TF_CONFIG (cluster and task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="" if tpu in (None, "local") else tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def split_cpu(replicas):
    """Splits the first physical CPU into `replicas` logical devices (idempotent)."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is not None and len(current) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"cannot split the CPU into {replicas} devices after TensorFlow started: {error}"
        ) from None


def task():
    """(task_type, task_id) of this process in $TF_CONFIG, or ("chief", 0) without one."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    spec = config.get("task", {})
    return spec.get("type", "chief"), int(spec.get("index", 0))


def is_multi_worker(strategy):
    """Whether `strategy` spans several processes (a $TF_CONFIG or TPU cluster of more than one task)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    tasks = resolver.cluster_spec().as_dict().values()
    return sum(len(addresses) for addresses in tasks) > 1


def any_worker_flag(strategy):
    """-> flagged(flag: bool) -> bool: whether `flag` is true on any worker of `strategy`, by one all-reduce of a
    scalar over every replica. Collective: every worker must call it at the same point of its loop."""

    @tf.function
    def count(flag):
        per_replica = strategy.run(lambda value: value, args=(flag,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return lambda flag: bool(count(tf.constant(1.0 if flag else 0.0)).numpy() > 0)


def is_chief(strategy):
    """Whether this process writes the real checkpoints, logs and exports.

    In a multi-worker job the chief is the "chief" task or, without one, worker 0.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief
