"""A tiny ADE model trained 4 steps on batches of varied lengths, with the train step built as the training
command builds it (its signature from `pipeline.per_replica_element_spec`), reporting how often the step traced.

Run as a script, it is one worker of the multi-worker tracing test: MultiWorkerMirroredStrategy from TF_CONFIG,
{"lengths": [...], "traces": n} written as JSON to the path given as argv[1]."""

import json
import sys

import numpy as np
import tensorflow as tf

from samtone_tf.data.pipeline import distributed_training_dataset, per_replica_element_spec
from samtone_tf.model.towers import tiny_dual_encoder
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.step import compile_for_training, make_train_step
from tests.helpers import TINY_VOCABULARY, varied_length_pairs


def train_on_varied_lengths(strategy, steps=4, global_batch=8):
    """-> (the padded query length of each step's batch on the first local replica, the step's trace count)."""
    config = TrainConfig(model="tiny", batch_size=global_batch, steps=steps)
    with strategy.scope():
        model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
        compile_for_training(model, config)
    dataset = distributed_training_dataset(strategy, varied_length_pairs(), global_batch, seed=0,
                                           tokenize=model.tokenize_inputs)
    step = make_train_step(strategy, model, element_spec=per_replica_element_spec(dataset, strategy, global_batch))
    lengths = []
    for _, batch in zip(range(steps), dataset):
        lengths.append(int(strategy.experimental_local_results(batch["query_token_ids"])[0].shape[1]))
        assert np.isfinite(step(batch))
    return lengths, step.traced.experimental_get_tracing_count()


def main(out_path):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    lengths, traces = train_on_varied_lengths(strategy)
    with open(out_path, "w") as file:
        json.dump({"lengths": lengths, "traces": traces}, file)


if __name__ == "__main__":
    main(sys.argv[1])
