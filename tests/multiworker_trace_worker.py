"""One worker of the multi-worker tracing test: trains a tiny ADE model 4 steps on batches of varied lengths
under MultiWorkerMirroredStrategy (TF_CONFIG from the environment), with the train step built as the training
command builds it, and writes {"lengths": [...], "traces": n} as JSON to the path given as argv[1]."""

import json
import sys

import numpy as np
import tensorflow as tf

from samtone_tf.data.pipeline import distributed_training_dataset, per_replica_element_spec
from samtone_tf.towers import tiny_dual_encoder
from samtone_tf.training import TrainConfig, compile_for_training, make_train_step
from tests.helpers import TINY_VOCABULARY, varied_length_pairs


def main(out_path):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    config = TrainConfig(model="tiny", batch_size=8, steps=4)
    with strategy.scope():
        model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
        compile_for_training(model, config)
    dataset = distributed_training_dataset(strategy, varied_length_pairs(), 8, seed=0, tokenize=model.tokenize_inputs)
    step = make_train_step(strategy, model, element_spec=per_replica_element_spec(dataset, strategy, 8))
    lengths = []
    for _, batch in zip(range(4), dataset):
        lengths.append(int(strategy.experimental_local_results(batch["query_token_ids"])[0].shape[1]))
        assert np.isfinite(step(batch))
    with open(out_path, "w") as file:
        json.dump({"lengths": lengths, "traces": step.traced.experimental_get_tracing_count()}, file)


if __name__ == "__main__":
    main(sys.argv[1])
