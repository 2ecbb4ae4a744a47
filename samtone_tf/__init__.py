"""samtone_tf: SamToNe (same-tower negatives) dual encoders on TensorFlow/Keras."""

# First: TensorFlow's environment flags take effect only if set before TensorFlow loads (options.py says which).
from samtone_tf.options import USER_SET_TF_LOG_LEVEL  # noqa: F401,I001
from samtone_tf.version import __version__

from samtone_tf.keras_loss import SamToNeLoss, SamToNeLossMixin, SamToNeModel
from samtone_tf.losses import samtone_loss

# Keras finds the classes a saved model.keras names (the dual encoder, its tokenizer, optimizer and schedule) only
# once their modules have registered them: `keras.saving.load_model("runs/x/model.keras")` must work after
# `import samtone_tf`, as it does for any Keras library's models.
from samtone_tf.model import text, towers  # noqa: F401,I001
from samtone_tf.training import optimizers  # noqa: F401

__all__ = ["SamToNeLoss", "SamToNeLossMixin", "SamToNeModel", "samtone_loss", "__version__"]
