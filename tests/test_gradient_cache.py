"""Gradient caching: the cached step's loss and gradients equal the uncached step's (dropout off), on one
device and across replicas, for every architecture; dropout masks are replayed exactly."""

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.data.pipeline import distributed_training_dataset, per_replica_element_spec, training_dataset
from samtone_tf.model.towers import tiny_dual_encoder
from samtone_tf.options import ARCHITECTURES
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.gradient_cache import gradient_cached_gradients
from samtone_tf.training.step import compile_for_training, make_train_step, split_batch
from tests.helpers import TINY_VOCABULARY, assert_dropout_replayed, mirrored_strategy, varied_length_pairs

# Trains beyond a few steps, exports SavedModels or starts subprocesses: out of the fast loop.
pytestmark = pytest.mark.slow

CONFIG = TrainConfig(model="tiny", batch_size=8, hard_negatives=2, steps=10, learning_rate=1e-3,
                     same_tower="both", bidirectional=True, learnable_temperature=True)


def pairs():
    """Pairs whose queries, documents and hard negatives vary in length, each side in another order: the cached
    step sorts each side by its own lengths, so its chunks hold other rows on each side."""
    return varied_length_pairs(24, hard_negatives=2)


def model_and_batch(architecture="ade", dropout=0.0, seed=0):
    model = tiny_dual_encoder(TINY_VOCABULARY, architecture, seed=seed, dropout=dropout, learnable_temperature=True)
    compile_for_training(model, CONFIG)
    dataset = training_dataset(pairs(), 8, seed=0, hard_negatives=2, tokenize=model.tokenize_inputs)
    return model, next(iter(dataset))


def uncached_gradients(model, x, y):
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
    return loss, tape.gradient(loss, model.trainable_variables)


def assert_same(got, want):
    (got_loss, got_grads), (want_loss, want_grads) = got, want
    np.testing.assert_allclose(float(got_loss), float(want_loss), atol=1e-5)
    for variable, g, w in zip(CURRENT_VARIABLES, got_grads, want_grads):
        w = np.zeros(variable.shape) if w is None else tf.convert_to_tensor(w).numpy()
        # Within 1e-5 of the tensor's scale (float32 sums in another order; gradients here reach ~30).
        scale = max(1.0, float(np.max(np.abs(w))))
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), w, atol=1e-5 * scale, err_msg=variable.path)
        # The cached sums are dense (a table-sized running sum, not one slice per token of the batch).
        assert not isinstance(g, tf.IndexedSlices), variable.path


@pytest.mark.parametrize("chunk", [1, 3, 8, 16])
def test_cached_loss_and_gradients_equal_uncached(chunk):
    from samtone_tf.training.gradient_cache import _length_orders

    global CURRENT_VARIABLES
    model, batch = model_and_batch()
    CURRENT_VARIABLES = model.trainable_variables
    x, y = split_batch(batch)
    orders = [order.numpy().tolist() for order in _length_orders(x).values()]
    assert len(orders) == 3 and orders[0] != orders[1] != orders[2]  # the sides' chunks hold different rows
    assert_same(gradient_cached_gradients(model, x, y, chunk), uncached_gradients(model, x, y))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_including_frozen_variables(architecture):
    global CURRENT_VARIABLES
    model, batch = model_and_batch(architecture)
    CURRENT_VARIABLES = model.trainable_variables
    x, y = split_batch(batch)
    assert any("temperature" in v.path for v in model.trainable_variables)
    assert_same(gradient_cached_gradients(model, x, y, 3), uncached_gradients(model, x, y))


def test_dropout_masks_are_replayed_exactly():
    model, batch = model_and_batch(dropout=0.3)
    assert_dropout_replayed(model, split_batch(batch)[0], "query")


def _train(strategy, chunk, steps=3):
    with strategy.scope():
        model, batch = model_and_batch()
    # Each replica's rows padded to their own longest, as the training command feeds them, and the step given
    # the dataset's spec, as the command gives it (one trace for every batch length).
    dataset = distributed_training_dataset(strategy, pairs(), 8, seed=0, hard_negatives=2,
                                           tokenize=model.tokenize_inputs)
    step = make_train_step(strategy, model, gradient_cache_chunk=chunk,
                           element_spec=per_replica_element_spec(dataset, strategy, 8))
    losses = [step(b) for b, _ in zip(dataset, range(steps))]
    return losses, [w.numpy() for w in model.trainable_weights]


@pytest.fixture(scope="module")
def cached_on_one_device():
    """Three cached steps (chunks of 3) on one device: (losses, weights), the reference of the two tests below."""
    return _train(tf.distribute.get_strategy(), 3)


def test_three_cached_steps_train_the_same_weights_as_uncached(cached_on_one_device):
    cached_losses, cached = cached_on_one_device
    plain_losses, plain = _train(tf.distribute.get_strategy(), None)
    np.testing.assert_allclose(cached_losses, plain_losses, atol=1e-5)
    for got, want in zip(cached, plain):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_two_replicas_equal_one_device(cached_on_one_device):
    one_losses, one = cached_on_one_device
    two_losses, two = _train(mirrored_strategy(2), 3)
    np.testing.assert_allclose(two_losses, one_losses, atol=1e-5)
    for got, want in zip(two, one):
        np.testing.assert_allclose(got, want, atol=1e-5)


def _checkpoint_weights(model_dir):
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("model/") and "seed" not in n)
    return {n: reader.get_tensor(n) for n in names}


def test_the_command_with_gradient_caching_on_two_workers_trains_like_one_uncached_process(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import REPOSITORY_ROOT, CommandInBackground, free_ports

    def command(model_dir, *extra):
        return [sys.executable, "-m", "samtone_tf.train", "--model", "tiny", "--model_dir", str(model_dir),
                "--eval_datasets", "", "--batch_size", "8", "--steps", "3", "--dropout", "0", "--hard_negatives", "0",
                "--no-export", "--learning_rate", "1e-3", *extra]

    plain_run = CommandInBackground(command(tmp_path / "plain"), tmp_path, "plain")  # beside the workers
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                                     "task": {"type": "worker", "index": index}}))
        env["TMPDIR"] = str(tmp_path / f"tmp{index}")
        os.makedirs(env["TMPDIR"])
        processes.append(subprocess.Popen(command(tmp_path / "cached", "--strategy", "multi_worker",
                                                  "--gradient_cache_chunk", "3"),
                                          cwd=REPOSITORY_ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    assert "gradient caching: each replica encodes its 4 rows 3 at a time" in outputs[0][0]
    plain = plain_run.finish()
    assert plain.returncode == 0, plain.stderr[-3000:]
    want, got = _checkpoint_weights(tmp_path / "plain"), _checkpoint_weights(tmp_path / "cached")
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)


def test_the_cached_step_cuts_sorted_chunks_to_their_longest_row_and_turns_the_towers_groups_off():
    from samtone_tf.encoding import encode_in_length_groups, whole_batches
    from samtone_tf.training.gradient_cache import _cut_to_longest, _in_order, _length_orders, _order_of

    document_lengths, query_lengths = [3, 9, 1, 6, 7, 2], [2, 2, 5, 1, 3, 4]
    x = {"document_token_ids": tf.ones([6, 12], tf.int32),
         "document_padding_mask": tf.sequence_mask(document_lengths, 12),
         "query_token_ids": tf.ones([6, 8], tf.int32), "query_padding_mask": tf.sequence_mask(query_lengths, 8),
         "hard_negatives_token_ids": tf.ones([6, 2, 10], tf.int32),
         "hard_negatives_padding_mask": tf.sequence_mask([[4, 1], [2, 2], [5, 3], [1, 1], [2, 6], [1, 2]], 10)}
    orders = _length_orders(x)
    # Each side by its own length, longest first (a row of hard negatives by its longest).
    assert {side: order.numpy().tolist() for side, order in orders.items()} == {
        "document": [1, 4, 3, 0, 5, 2], "query": [2, 5, 4, 0, 1, 3], "hard_negatives": [4, 2, 0, 1, 5, 3]}
    sorted_x = {key: _in_order(value, _order_of(key, orders)) for key, value in x.items()}
    chunk = _cut_to_longest({key: value[2:4] for key, value in sorted_x.items()})  # each side's 3rd and 4th longest
    assert chunk["document_token_ids"].shape == (2, 6) and chunk["document_padding_mask"].shape == (2, 6)
    assert chunk["query_token_ids"].shape == (2, 3)  # queries 4 and 0, not the documents' rows 3 and 0
    assert chunk["hard_negatives_token_ids"].shape == (2, 2, 4)
    assert chunk["document_padding_mask"].numpy().sum(axis=1).tolist() == [6, 3]  # no real token lost
    assert chunk["query_padding_mask"].numpy().sum(axis=1).tolist() == [3, 2]
    query_order = _order_of("query", orders)  # an embedding's key is its side
    restored = _in_order(_in_order(tf.range(6), query_order), query_order, inverse=True)
    assert restored.numpy().tolist() == list(range(6))
    assert _length_orders({"query": tf.constant(["raw", "text"])}) == {}  # raw strings: the batch's order

    shapes = []

    def encode(ids, mask, training=None):
        shapes.append(tuple(ids.shape))
        return tf.cast(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1, keepdims=True), tf.float32)

    with whole_batches():
        encode_in_length_groups(encode, x["document_token_ids"], x["document_padding_mask"], groups=3, min_rows=2)
    assert shapes == [(6, 12)]  # one call: the batch whole
    encode_in_length_groups(encode, x["document_token_ids"], x["document_padding_mask"], groups=3, min_rows=2)
    assert len(shapes) == 4  # outside the context: three groups
