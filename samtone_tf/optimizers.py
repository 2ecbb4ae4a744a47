"""Keras's AdamW and Adafactor, updating embedding tables with the moments of their summed gradient.

An embedding lookup's gradient is a tf.IndexedSlices with one row per token of the batch, so a token that
occurs n times (every sequence's [CLS] and [SEP], frequent words) has n rows. Keras 3's optimizers apply their
element-wise ops to the rows before summing them: Adam's second moment then accumulates Σ gᵢ² where Adam (and
PyTorch, whose embedding gradients are dense, as in sentence-transformers) uses (Σ gᵢ)². These optimizers sum
the rows first, after any cross-replica reduction (which concatenates the replicas' rows), so every row gets
the update of its total gradient. Adam's update is dense anyway (`gradient - m` is table-sized), so summing
costs no extra memory beyond one table-sized tensor.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class _SummedEmbeddingRows:
    """Mixed into a Keras optimizer: `update_step` receives each variable's gradient with its slices summed."""

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)  # sums repeated rows (unsorted_segment_sum)
        return super().update_step(gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="samtone_tf")
class AdamW(_SummedEmbeddingRows, keras.optimizers.AdamW):
    """keras.optimizers.AdamW whose embedding rows are updated with their summed gradient (module docstring)."""


@keras.saving.register_keras_serializable(package="samtone_tf")
class Adafactor(_SummedEmbeddingRows, keras.optimizers.Adafactor):
    """keras.optimizers.Adafactor whose embedding rows are updated with their summed gradient."""
