"""The optimizers and their schedule: Keras's AdamW and Adafactor, updating embedding tables with the moments of their summed gradient.

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


def make_optimizer(config, schedule):
    """The configuration's optimizer on `schedule`: AdamW (no decay of biases, norms and the temperature)
    or Adafactor, each updating embedding rows with their summed gradient (this module's classes)."""
    if config.optimizer == "adafactor":
        return Adafactor(learning_rate=schedule)
    optimizer = AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "layer_norm", "temperature"])
    return optimizer


@keras.saving.register_keras_serializable(package="samtone_tf")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over the first `warmup_steps` steps, then linear decay over the rest, so that
    every one of the `total_steps` steps takes a positive rate: step n (1-based) takes peak * n / warmup_steps
    while n <= warmup_steps, then peak * (total_steps - n + 1) / (total_steps - warmup_steps); the last step takes
    peak / (total_steps - warmup_steps), and 0 would come one step after it. From the end of warm-up on these are
    the rates of transformers' get_linear_schedule_with_warmup (sentence-transformers' default), whose warm-up
    starts at 0 instead (a first step that changes nothing).

    Its position is the optimizer's iteration count (the steps already taken), so a resumed run continues it
    exactly.
    """

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)

    def __call__(self, iterations):
        step = tf.cast(iterations, tf.float32) + 1.0  # the 1-based step this rate is for
        warmup = self.peak * step / max(self.warmup_steps, 1)
        remaining = max(self.total_steps - self.warmup_steps, 1)
        decay = self.peak * tf.maximum(0.0, (self.total_steps - step + 1.0) / remaining)
        return tf.where(step <= self.warmup_steps, warmup, decay)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps)

