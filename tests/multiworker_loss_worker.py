"""One worker of the multi-worker loss test: computes its slice of the batch under
MultiWorkerMirroredStrategy (TF_CONFIG from the environment) and saves losses and
all-reduced weight gradients to the .npz path given as argv[1]."""

import sys

import numpy as np
import tensorflow as tf

from tests.linear_dual_encoder import GLOBAL_BATCH, linear_dual_encoder_loss, make_batch, make_weights


def main(out_path):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    assert replicas == 2, replicas
    local = GLOBAL_BATCH // replicas
    batch = make_batch()
    with strategy.scope():
        wq, wp = (tf.Variable(w) for w in make_weights())

    def slice_for(context):
        start = context.replica_id_in_sync_group * local
        return {k: v[start : start + local] for k, v in batch.items()}

    parts = strategy.experimental_distribute_values_from_function(slice_for)

    @tf.function
    def step(part):
        def replica_fn(part):
            with tf.GradientTape() as tape:
                losses = linear_dual_encoder_loss(part, wq, wp)
                scaled = tf.reduce_sum(losses) / GLOBAL_BATCH
            grads = tape.gradient(scaled, [wq, wp])
            context = tf.distribute.get_replica_context()
            return losses, context.all_reduce(tf.distribute.ReduceOp.SUM, grads)

        return strategy.run(replica_fn, args=(part,))

    losses, (grad_q, grad_p) = step(parts)
    local_value = lambda x: strategy.experimental_local_results(x)[0].numpy()  # noqa: E731
    np.savez(out_path, losses=local_value(losses), grad_q=local_value(grad_q), grad_p=local_value(grad_p))


if __name__ == "__main__":
    main(sys.argv[1])
