"""samtone_tf: SamToNe (same-tower negatives) dual encoders on TensorFlow/Keras."""

import os

# oneDNN kernels make TensorFlow's CPU matmuls ~1.4x faster on this project's models,
# but TF 2.20 enables them by default only on some CPUs. A user's own setting wins;
# it takes effect only if TensorFlow was not imported before samtone_tf.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) hides our progress output.
# The commands hide the rest (samtone_tf.cli.quiet_native_logs) unless the user set it or --verbose.
USER_SET_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from samtone_tf.version import __version__  # noqa: E402

from samtone_tf.keras_loss import SamToNeLoss, SamToNeLossMixin, SamToNeModel  # noqa: E402
from samtone_tf.losses import samtone_loss  # noqa: E402

# Keras finds the classes a saved model.keras names (the dual encoder, its tokenizer, optimizer and schedule) only
# once their modules have registered them: `keras.saving.load_model("runs/x/model.keras")` must work after
# `import samtone_tf`, as it does for any Keras library's models.
from samtone_tf import optimizers, text, towers, training  # noqa: E402,F401,I001

__all__ = ["SamToNeLoss", "SamToNeLossMixin", "SamToNeModel", "samtone_loss", "__version__"]
