"""A keras.Model whose compiled loss receives the whole output dict.

Keras 3's `compile(loss=L)` with a dict-valued model output applies L to each
output separately. A contrastive loss needs query and document embeddings
together: build models trained with `SamToNeLoss` as `SamToNeModel(inputs, outputs)`,
or mix `SamToNeLossMixin` into a keras.Model subclass.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from samtone_tf.losses import SamToNeLoss


class SamToNeLossMixin:
    """Mixed into a keras.Model: passes `(y, y_pred)` whole to a compiled `SamToNeLoss`.

    Any other compiled loss is handled by Keras as usual. Losses added with
    `add_loss` (e.g. regularisers) are summed in, scaled for distribution like
    Keras does. (A mixin rather than a base model because Keras rewrites the
    bases of a Model subclass the first time it is built functionally.)
    """

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(self.loss, SamToNeLoss):
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        total = self.loss(y, y_pred, sample_weight)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        for extra in self.losses:
            total += tf.cast(tf.reduce_sum(extra), total.dtype) / replicas
        return total

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a tf.distribute strategy Keras 3.15 builds the model from the MEAN of
        # the first batch over replicas, which fails on string inputs (raw text, ids).
        # The first replica's batch has the same structure and shapes.
        if iterator is not None and getattr(self, "_distribute_strategy", None) is not None:
            strategy = self.distribute_strategy
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: strategy.experimental_local_results(value)[0]
                    if isinstance(value, tf.distribute.DistributedValues)
                    else value,
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


class SamToNeModel(SamToNeLossMixin, keras.Model):
    """A keras.Model whose compiled `SamToNeLoss` receives the whole output dict.

    Build it functionally, `SamToNeModel(inputs, outputs)`, or subclass it.
    """
