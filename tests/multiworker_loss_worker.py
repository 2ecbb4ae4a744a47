"""One worker of the multi-worker loss test: computes its slice of the batch under
MultiWorkerMirroredStrategy (TF_CONFIG from the environment) and saves losses and
all-reduced weight gradients to the .npz path given as argv[1]."""

import sys

import numpy as np
import tensorflow as tf

from tests.linear_dual_encoder import distributed_step


def main(out_path):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    losses, (grad_q, grad_p) = distributed_step(strategy)
    local_value = lambda x: strategy.experimental_local_results(x)[0].numpy()  # noqa: E731
    np.savez(out_path, losses=local_value(losses), grad_q=local_value(grad_q), grad_p=local_value(grad_p))


if __name__ == "__main__":
    main(sys.argv[1])
