"""samtone_tf: SamToNe (same-tower negatives) dual encoders on TensorFlow/Keras."""

__version__ = "0.1.0"

from samtone_tf.losses import SamToNeLoss, samtone_loss
from samtone_tf.model_base import SamToNeModel

__all__ = ["SamToNeLoss", "SamToNeModel", "samtone_loss", "__version__"]
