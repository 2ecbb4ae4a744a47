"""Shared test set-up.

The CPU is split into 4 logical devices before TensorFlow initialises, so that
MirroredStrategy tests can run 2 or 4 replicas on one machine.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

LOGICAL_CPUS = 4

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(LOGICAL_CPUS)]
)

_strategies_made = 0


def mirrored_strategy(replicas):
    """A MirroredStrategy over `replicas` logical CPUs, safe to make many of in one process.

    Strategies in one process share collective group keys; a group first used with
    2 devices then joined by 4 aborts. TensorFlow's own tests set the
    `_collective_key_base` class attribute to keep them apart; so do we.
    """
    global _strategies_made
    _strategies_made += 1
    tf.distribute.MirroredStrategy._collective_key_base = 10_000 * _strategies_made
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
