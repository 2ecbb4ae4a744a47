"""The training step, the optimizer and its schedule: what the training command, the benchmarks and
library users share.

`make_train_step` runs one optimisation step on every replica of a tf.distribute strategy: the towers on
the local rows, `samtone_loss` over the batch gathered from all replicas, gradients summed across
replicas; it returns the mean loss over the global batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from samtone_tf.losses import samtone_loss


def make_train_step(strategy, model, optimizer, config):
    """A tf.function running one optimisation step on every replica; returns the global mean loss."""
    global_batch = config["batch_size"]
    loss_options = dict(same_tower=config["same_tower"], bidirectional=config["bidirectional"])

    @tf.autograph.experimental.do_not_convert  # plain TensorFlow: no Python control flow on tensors
    def replica_step(batch):
        inputs = {"query": batch["query"], "document": batch["document"]}
        if "hard_negatives" in batch:
            inputs["hard_negatives"] = batch["hard_negatives"]
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            per_example = samtone_loss(
                outputs["query"], outputs["document"], outputs.get("hard_negatives"),
                temperature=model.current_temperature(), query_ids=batch["query_id"],
                document_ids=batch["document_id"], hard_negative_ids=batch.get("hard_negative_ids"),
                **loss_options,
            )
            # Summed over replicas, this is the mean over the GLOBAL batch.
            loss = tf.reduce_sum(per_example) / global_batch
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function
    def step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step


def all_finite(model):
    """Whether every weight of the model is finite (checked before each checkpoint)."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.weights if "float" in str(v.dtype))


def make_optimizer(config, schedule):
    if config["optimizer"] == "adafactor":
        return keras.optimizers.Adafactor(learning_rate=schedule)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config["weight_decay"])
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "layer_norm", "temperature"])
    return optimizer


@keras.saving.register_keras_serializable(package="samtone_tf")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear decay to 0 at `total_steps`.

    Its position is the optimizer's iteration count, so a resumed run continues it exactly.
    """

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = self.peak * step / max(self.warmup_steps, 1)
        remaining = max(self.total_steps - self.warmup_steps, 1)
        decay = self.peak * tf.maximum(0.0, (self.total_steps - step) / remaining)
        return tf.where(step <= self.warmup_steps, warmup, decay)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps)
