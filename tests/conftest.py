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


# --- shared data and checkpoints ---------------------------------------------------

import pytest  # noqa: E402

from samtone_tf.locations import REPOSITORY_ROOT  # noqa: E402

FIXTURES = REPOSITORY_ROOT / "tests" / "fixtures"


def _shared(kind, what):
    """The shared directory of `kind`; in CI its absence fails the test, elsewhere skips it."""
    from samtone_tf.locations import shared_dir

    try:
        return shared_dir(kind)
    except FileNotFoundError as error:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is required in CI: {error}")
        pytest.skip(f"{what} not available: {error}")


@pytest.fixture(scope="session")
def shared_data():
    return _shared("data", "the shared benchmark data")


@pytest.fixture(scope="session")
def default_checkpoint():
    models = _shared("models", "the shared pretrained checkpoints")
    path = models / "all-MiniLM-L6-v2"
    if not path.is_dir():
        pytest.fail(f"{path} is missing")
    return path


TINY_VOCABULARY = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list(".,!?'-")
    + list("abcdefghijklmnopqrstuvwxyz")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    + "the cat dog sat on mat who what where when is was of and to in".split()
    + ["##ed", "##ing"]
)


@pytest.fixture
def tiny_vocabulary(tmp_path):
    """A small WordPiece vocabulary file written by the test."""
    path = tmp_path / "vocab.txt"
    path.write_text("".join(token + "\n" for token in TINY_VOCABULARY))
    return path


def free_ports(count):
    """`count` TCP ports free on 127.0.0.1 (for local multi-worker clusters)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
