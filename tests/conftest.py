"""Shared test set-up: the CPU is split into logical devices before TensorFlow initialises, so that
MirroredStrategy tests can run 2 or 4 replicas on one machine; fixtures for the shared data and checkpoint.
Helpers live in tests/helpers.py (import that, not this file)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests.helpers import LOGICAL_CPUS, TINY_VOCABULARY  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(LOGICAL_CPUS)]
)


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


@pytest.fixture
def tiny_vocabulary(tmp_path):
    """A small WordPiece vocabulary file written by the test."""
    path = tmp_path / "vocab.txt"
    path.write_text("".join(token + "\n" for token in TINY_VOCABULARY))
    return path


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A training model_dir holding a tiny ADE dual encoder's model.keras (as `train` leaves it)."""
    from samtone_tf.model.towers import tiny_dual_encoder

    directory = tmp_path / "run"
    directory.mkdir()
    tiny_dual_encoder(TINY_VOCABULARY, "ade").save(directory / "model.keras")
    return directory
