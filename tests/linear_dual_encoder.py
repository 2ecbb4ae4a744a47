"""A linear dual encoder and a fixed batch, shared by the distributed tests and their worker processes.

Imports nothing from conftest, so worker processes keep one CPU device."""

import numpy as np
import tensorflow as tf

from samtone_tf import samtone_loss

GLOBAL_BATCH, HARD, INPUT_DIM, DIM = 8, 2, 6, 4
OPTIONS = dict(temperature=0.1, same_tower="both", bidirectional=True)


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        xq=rng.normal(size=(GLOBAL_BATCH, INPUT_DIM)).astype(np.float32),
        xp=rng.normal(size=(GLOBAL_BATCH, INPUT_DIM)).astype(np.float32),
        xh=rng.normal(size=(GLOBAL_BATCH, HARD, INPUT_DIM)).astype(np.float32),
        # Duplicates inside AND across replica slices exercise the gathered id mask.
        query_ids=np.array([b"q0", b"q1", b"q0", b"q3", b"q4", b"q5", b"q1", b"q7"]),
        document_ids=np.array([0, 1, 2, 3, 4, 2, 6, 7], np.int64),
    )


def make_weights(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(INPUT_DIM, DIM)).astype(np.float32), rng.normal(
        size=(INPUT_DIM, DIM)
    ).astype(np.float32)


def encode(x, weights):
    return tf.math.l2_normalize(tf.einsum("...i,id->...d", x, weights), axis=-1)


def linear_dual_encoder_loss(batch, wq, wp):
    """Per-example loss of the linear dual encoder on (part of) a batch."""
    return samtone_loss(
        encode(batch["xq"], wq),
        encode(batch["xp"], wp),
        encode(batch["xh"], wp),
        query_ids=batch["query_ids"],
        document_ids=batch["document_ids"],
        **OPTIONS,
    )


def single_device_reference(batch):
    wq, wp = (tf.Variable(w) for w in make_weights())
    with tf.GradientTape() as tape:
        losses = linear_dual_encoder_loss(batch, wq, wp)
        mean = tf.reduce_mean(losses)
    grads = tape.gradient(mean, [wq, wp])
    return losses.numpy(), [g.numpy() for g in grads]



def distributed_step(strategy):
    """Under `strategy`: the replicas' per-example losses and the all-reduced gradients of the
    mean loss over the global batch (each replica takes its slice of `make_batch()`)."""
    replicas = strategy.num_replicas_in_sync
    local = GLOBAL_BATCH // replicas
    batch = make_batch()
    with strategy.scope():
        wq, wp = (tf.Variable(w) for w in make_weights())

    def slice_for(context):
        start = context.replica_id_in_sync_group * local
        return {k: v[start : start + local] for k, v in batch.items()}

    parts = strategy.experimental_distribute_values_from_function(slice_for)

    @tf.function
    def step(inputs):
        def replica_fn(part):
            with tf.GradientTape() as tape:
                losses = linear_dual_encoder_loss(part, wq, wp)
                scaled = tf.reduce_sum(losses) / GLOBAL_BATCH
            grads = tape.gradient(scaled, [wq, wp])
            context = tf.distribute.get_replica_context()
            return losses, context.all_reduce(tf.distribute.ReduceOp.SUM, grads)

        return strategy.run(replica_fn, args=(inputs,))

    return step(parts)
