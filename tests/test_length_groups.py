"""A tokenized batch encoded in groups of rows of similar length (each cut to its own longest row) gives the
embeddings, the loss and the gradients of the batch encoded as padded; it is what training runs by default."""

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.data.pipeline import training_dataset
from samtone_tf.data.records import TrainingPair
from samtone_tf.encoding import encode_in_length_groups, length_group_bounds
from samtone_tf.model.towers import tiny_dual_encoder
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.gradient_cache import gradient_cached_gradients
from samtone_tf.training.step import compile_for_training, make_train_step, split_batch
from tests.helpers import TINY_VOCABULARY, WORDS, assert_dropout_replayed

# Trains beyond a few steps, exports SavedModels or starts subprocesses: out of the fast loop.
pytestmark = pytest.mark.slow

CONFIG = TrainConfig(model="tiny", batch_size=8, hard_negatives=1, steps=10, learning_rate=1e-3,
                     same_tower="both", bidirectional=True, learnable_temperature=True)


def mixed_length_pairs(count=32, seed=0):
    """Documents of 1 to 50 words (a few long ones among short ones, as in mixed training data)."""
    rng = np.random.default_rng(seed)
    lengths = [50, 1, 2, 24, 3, 12, 6, 2] * (count // 8)
    return [TrainingPair(f"q{i}", " ".join(rng.choice(WORDS, 1 + i % 5)), f"d{i}",
                         " ".join(rng.choice(WORDS, lengths[i])), (" ".join(rng.choice(WORDS, lengths[-1 - i])),))
            for i in range(count)]


def model_and_batch(length_groups, dropout=0.0, architecture="ade"):
    model = tiny_dual_encoder(TINY_VOCABULARY, architecture, seed=0, dropout=dropout, learnable_temperature=True,
                              length_groups=length_groups)
    compile_for_training(model, CONFIG)
    dataset = training_dataset(mixed_length_pairs(), 16, seed=0, hard_negatives=1, tokenize=model.tokenize_inputs)
    return model, next(iter(dataset))


def loss_and_gradients(model, batch):
    x, y = split_batch(batch)
    with tf.GradientTape() as tape:
        outputs = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=outputs)
    return outputs, loss, tape.gradient(loss, model.trainable_variables)


def dense(gradient):
    return tf.convert_to_tensor(gradient).numpy()


def test_groups_cut_each_to_its_longest_row_and_keep_the_rows_in_order():
    lengths = [40, 3, 20, 10, 2, 21, 11, 5]
    longest = max(lengths)
    token_ids = tf.constant([[7 + j for j in range(n)] + [0] * (longest - n) for n in lengths], tf.int32)
    mask = tf.sequence_mask(lengths, longest)
    seen = []

    def encode(ids, padding_mask, training=None):  # masked mean of the ids, and the shape it was given
        seen.append(tuple(ids.shape))
        weights = tf.cast(padding_mask, tf.float32)
        return tf.stack([tf.reduce_sum(tf.cast(ids, tf.float32) * weights, axis=1) / tf.reduce_sum(weights, axis=1),
                         tf.reduce_sum(weights, axis=1)], axis=1)

    grouped = encode_in_length_groups(encode, token_ids, mask, groups=4, min_rows=2)
    # By length: 40, 21 | 20, 11 | 10, 5 | 3, 2.
    assert seen == [(2, 40), (2, 20), (2, 10), (2, 3)]
    np.testing.assert_allclose(grouped.numpy(), encode(token_ids, mask).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(grouped.numpy()[:, 1], lengths)
    seen.clear()
    assert encode_in_length_groups(encode, token_ids, mask, groups=1).shape == (8, 2) and seen == [(8, 40)]


def test_group_bounds_are_equal_runs_of_at_least_min_rows():
    assert length_group_bounds(64, 8, 4) == [0, 8, 16, 24, 32, 40, 48, 56, 64]
    assert length_group_bounds(10, 4, 2) == [0, 2, 5, 7, 10]  # nearly equal when the groups do not divide
    assert length_group_bounds(12, 8, 4) == [0, 4, 8, 12]  # fewer groups, each of at least min_rows
    assert length_group_bounds(7, 8, 4) == [0, 7] and length_group_bounds(64, 1, 4) == [0, 64]  # whole
    assert length_group_bounds(None, 8, 4) == []  # unknown batch size


def test_a_small_batch_one_of_unknown_size_or_one_xla_compiles_is_encoded_whole():
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade", dropout=0.0)
    tower = model.document_tower
    tokens = tower.tokenizer(tf.constant(["the cat sat on the mat and the dog sat on the cat", "the dog sat"] * 4))
    ids, mask = tokens["token_ids"], tokens["padding_mask"]
    want = tower.encode_tokens(ids, mask).numpy()
    shapes = []

    def encode(token_ids, padding_mask, training=None):
        shapes.append(tuple(token_ids.shape))
        return tower.encode_tokens(token_ids, padding_mask, training=training)

    np.testing.assert_allclose(encode_in_length_groups(encode, ids, mask, groups=8).numpy(), want, atol=1e-6)
    assert len(shapes) == 2 and [s[0] for s in shapes] == [4, 4]  # 8 rows: 2 groups of at least 4
    assert shapes[0][1] > shapes[1][1]
    shapes.clear()
    unknown = tf.function(lambda i, m: encode_in_length_groups(encode, i, m),
                          input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.bool)])
    np.testing.assert_allclose(unknown(ids, mask).numpy(), want, atol=1e-6)
    assert shapes == [(None, None)]
    shapes.clear()
    compiled = tf.function(lambda i, m: encode_in_length_groups(encode, i, m, min_rows=1), jit_compile=True)
    np.testing.assert_allclose(compiled(ids, mask).numpy(), want, atol=1e-5)
    assert shapes == [(8, ids.shape[1])]  # XLA needs static shapes: the batch is encoded whole
    empty = encode_in_length_groups(tower.encode_tokens, tf.zeros([0, 5], tf.int32), tf.zeros([0, 5], tf.bool))
    assert empty.shape == (0, 32)


@pytest.mark.parametrize("architecture", ["ade", "sde", "ade_spl"])
def test_grouped_batch_gives_the_padded_batch_embeddings_loss_and_gradients(architecture):
    grouped_model, batch = model_and_batch(4, architecture=architecture)
    padded_model, same_batch = model_and_batch(1, architecture=architecture)
    lengths = tf.reduce_sum(tf.cast(batch["document_padding_mask"], tf.int32), axis=1).numpy()
    assert lengths.max() > 4 * lengths.min(), "the batch must mix lengths for the test to mean anything"
    got_outputs, got_loss, got_gradients = loss_and_gradients(grouped_model, batch)
    want_outputs, want_loss, want_gradients = loss_and_gradients(padded_model, same_batch)
    for key in ("query", "document", "hard_negatives"):
        np.testing.assert_allclose(got_outputs[key].numpy(), want_outputs[key].numpy(), atol=1e-5, err_msg=key)
    np.testing.assert_allclose(float(got_loss), float(want_loss), atol=1e-5)
    for variable, got, want in zip(grouped_model.trainable_variables, got_gradients, want_gradients):
        if want is None:
            assert got is None, variable.path
            continue
        # Within 1e-5 of the tensor's scale (float32 sums in another order; gradients here reach ~20).
        scale = max(1.0, float(np.abs(dense(want)).max()))
        np.testing.assert_allclose(dense(got), dense(want), atol=1e-5 * scale, err_msg=variable.path)


def test_three_training_steps_grouped_and_padded_train_the_same_weights():
    models = {}
    for groups in (4, 1):
        model, _ = model_and_batch(groups)
        step = make_train_step(tf.distribute.get_strategy(), model)
        dataset = training_dataset(mixed_length_pairs(), 16, seed=1, hard_negatives=1, tokenize=model.tokenize_inputs)
        for batch, _ in zip(dataset, range(3)):
            step(batch)
        models[groups] = model
    for got, want in zip(models[4].trainable_variables, models[1].trainable_variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, err_msg=got.path)


def test_dropout_masks_over_groups_are_replayed_exactly():
    model, batch = model_and_batch(4, dropout=0.3)
    assert_dropout_replayed(model, split_batch(batch)[0], "document")


def test_gradient_caching_over_groups_matches_the_uncached_step():
    model, batch = model_and_batch(4, dropout=0.0)
    _, want_loss, want_gradients = loss_and_gradients(model, batch)
    x, y = split_batch(batch)
    # Chunks of 8 sorted rows, each encoded whole, cut to its longest row (the towers' groups off inside).
    loss, gradients = tf.function(lambda x: gradient_cached_gradients(model, x, y, 8))(x)
    np.testing.assert_allclose(float(loss), float(want_loss), atol=1e-5)
    for variable, got, want in zip(model.trainable_variables, gradients, want_gradients):
        want = np.zeros(variable.shape) if want is None else dense(want)
        np.testing.assert_allclose(dense(got), want, atol=1e-5 * max(1.0, np.abs(want).max()), err_msg=variable.path)
