"""Keras glue for the SamToNe loss: `SamToNeLoss` (a Keras loss over the whole output dict), its
reduction (exact over replicas holding different numbers of rows), and the model classes whose
compiled loss receives that dict.

Keras 3's `compile(loss=L)` with a dict-valued model output applies L to each output separately. A
contrastive loss needs query and document embeddings together: build models trained with
`SamToNeLoss` as `SamToNeModel(inputs, outputs)`, or mix `SamToNeLossMixin` into a keras.Model subclass.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from samtone_tf.losses import check_options, matryoshka_samtone_loss, samtone_loss

# Keys of `y_true` (ids) understood by SamToNeLoss.
QUERY_ID_KEYS = ("query_ids", "query_id")
DOCUMENT_ID_KEYS = ("document_ids", "document_id")
HARD_NEGATIVE_ID_KEYS = ("hard_negative_ids",)


@keras.saving.register_keras_serializable(package="samtone_tf")
class SamToNeLoss(keras.losses.Loss):
    """Keras loss wrapping `samtone_loss`.

    `y_pred` is a dict with "query" [B, D], "document" [B, D], optionally
    "hard_negatives" [B, H, D] and "temperature" (a scalar that overrides the
    configured one: a `DualEncoder` always outputs its temperature, fixed or learnt,
    and is compiled with `temperature=None`, which takes the model's). `y_true` is None or
    a dict with "query_ids"/"query_id", "document_ids"/"document_id" [B] and
    "hard_negative_ids" [B, H].

    Keras 3's `compile()` hands a single loss each output of a dict separately;
    SamToNe needs all of them at once, so compile it on a `samtone_tf.SamToNeModel`
    (functional) or a model class mixing in `samtone_tf.SamToNeLossMixin` (as
    `samtone_tf.model.towers.DualEncoder` does), which pass the whole output dict.
    Under several replicas the reduction is over the GLOBAL batch, even when
    replicas hold different numbers of rows: gradients summed across replicas
    are those of the global "sum_over_batch_size" mean, and Keras reports it.
    """

    def __init__(
        self,
        temperature=0.05,
        same_tower="query",
        bidirectional=False,
        reduction="sum_over_batch_size",
        name="samtone_loss",
        dtype=None,
        matryoshka_dims=None,
        matryoshka_weights=None,
    ):
        check_options(same_tower, bidirectional, 1.0 if temperature is None else temperature)
        if matryoshka_weights is not None and not matryoshka_dims:
            raise ValueError("matryoshka_weights without matryoshka_dims")
        # Matryoshka representation learning: the loss also at these prefixes of the embeddings (`losses.
        # matryoshka_samtone_loss`); the full dimension is always included.
        self.matryoshka_dims = [int(d) for d in matryoshka_dims] if matryoshka_dims else None
        self.matryoshka_weights = [float(w) for w in matryoshka_weights] if matryoshka_weights else None
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = None if temperature is None else float(temperature)
        self.same_tower = same_tower
        self.bidirectional = bool(bidirectional)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras's Loss.__call__ casts y_true to float, which would break string ids.
        with tf.name_scope(self.name):
            losses = self.call(y_true, y_pred)
            return _reduce(losses, sample_weight, self.reduction)

    def call(self, y_true, y_pred):
        if not isinstance(y_pred, dict) or "query" not in y_pred or "document" not in y_pred:
            raise ValueError(
                "SamToNeLoss: y_pred must be a dict with 'query' and 'document' "
                f"embeddings (and optionally 'hard_negatives'); got {type(y_pred).__name__}"
                + (f" with keys {sorted(y_pred)}" if isinstance(y_pred, dict) else "")
            )
        ids = y_true if isinstance(y_true, dict) else {}
        if y_true is not None and not isinstance(y_true, dict):
            raise ValueError(
                "SamToNeLoss: y_true must be None or a dict of ids "
                f"({QUERY_ID_KEYS[0]!r}, {DOCUMENT_ID_KEYS[0]!r}); got {type(y_true).__name__}"
            )
        if self.temperature is None and "temperature" not in y_pred:
            raise ValueError("SamToNeLoss(temperature=None) takes the model's temperature, but y_pred has no "
                             "'temperature' (give the loss a temperature, or output the model's)")
        if self.temperature is not None and "temperature" in y_pred:
            told = tf.get_static_value(y_pred["temperature"])
            if told is not None and abs(float(told) - self.temperature) > 1e-6 * self.temperature:
                raise ValueError(f"SamToNeLoss: the model's temperature {float(told):g} differs from the loss's "
                                 f"{self.temperature:g}; the model holds it: compile with SamToNeLoss(temperature="
                                 "None) (or build the model with the temperature you want)")
        loss, matryoshka = samtone_loss, {}
        if self.matryoshka_dims:
            loss = matryoshka_samtone_loss
            matryoshka = {"dimensions": self.matryoshka_dims, "weights": self.matryoshka_weights}
        return loss(
            y_pred["query"],
            y_pred["document"],
            y_pred.get("hard_negatives"),
            **matryoshka,
            temperature=y_pred.get("temperature", self.temperature),
            same_tower=self.same_tower,
            bidirectional=self.bidirectional,
            query_ids=_first_present(ids, QUERY_ID_KEYS),
            document_ids=_first_present(ids, DOCUMENT_ID_KEYS),
            hard_negative_ids=_first_present(ids, HARD_NEGATIVE_ID_KEYS),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature,
            same_tower=self.same_tower,
            bidirectional=self.bidirectional,
            matryoshka_dims=self.matryoshka_dims,
            matryoshka_weights=self.matryoshka_weights,
        )
        return config


def _first_present(mapping, keys):
    for key in keys:
        if key in mapping:
            return mapping[key]
    return None


def _reduce(losses, sample_weight, reduction):
    """Keras's loss reductions, exact across replicas holding different numbers of rows.

    Under several replicas, the value each replica returns has the gradient of its share of the
    GLOBAL reduction (local sum / global count: summed over replicas, the gradient of the global
    mean), and the value global reduction / replicas, which is what Keras's loss tracker (replicas x
    value, weighted by local rows) turns back into the global reduction whatever the local sizes.
    """
    if sample_weight is not None:
        sample_weight = tf.cast(tf.reshape(sample_weight, [-1]), losses.dtype)
        losses = losses * sample_weight
    if reduction in (None, "none"):
        return losses
    local_sum = tf.reduce_sum(losses)
    if reduction == "sum":
        count = None
    elif reduction == "mean_with_sample_weight" and sample_weight is not None:
        count = tf.reduce_sum(sample_weight)
    else:  # "sum_over_batch_size", "mean", or "mean_with_sample_weight" without weights
        count = tf.cast(tf.size(losses), losses.dtype)
    context = tf.distribute.get_replica_context()
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if context is None or replicas == 1:
        return local_sum if count is None else tf.math.divide_no_nan(local_sum, count)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, local_sum)
    if count is not None:
        global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
        local_share, total = tf.math.divide_no_nan(local_sum, global_count), tf.math.divide_no_nan(total, global_count)
    else:
        local_share = local_sum
    return local_share + tf.stop_gradient(total / replicas - local_share)


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
