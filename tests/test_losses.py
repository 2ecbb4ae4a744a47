"""samtone_loss and SamToNeLoss against an independent float64 reference."""

import itertools
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.keras_loss import SamToNeLoss
from samtone_tf.losses import samtone_loss
from tests.reference_loss import finite_difference_gradient, reference_samtone

BATCH, HARD, DIM, TAU = 6, 2, 5, 0.1

# Rows 1 and 2 share a query id; rows 0 and 4 share a document id.
QUERY_IDS = np.array([10, 11, 11, 12, 13, 14])
DOCUMENT_IDS = np.array(["a", "b", "c", "d", "a", "e"])
# Row 0's first hard negative is its own positive (and row 4's); row 1's is row 2's positive (same
# query); row 3's is row 1's positive (a true negative for row 3, not for rows 1 and 2).
HARD_NEGATIVE_IDS = np.array([["a", "x"], ["c", "y"], ["p", "q"], ["b", "z"], ["r", "s"], ["t", "u"]])


def unit_rows(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def valid_combinations():
    for same_tower, bidirectional, hard, ids in itertools.product(
        ("none", "query", "document", "both"), (False, True), (False, True), (False, True)
    ):
        if same_tower in ("document", "both") and not bidirectional:
            continue
        yield same_tower, bidirectional, hard, ids


@pytest.mark.parametrize("same_tower,bidirectional,hard,ids", list(valid_combinations()))
def test_loss_and_gradients_match_float64_reference(same_tower, bidirectional, hard, ids):
    rng = np.random.default_rng(zlib.crc32(repr((same_tower, bidirectional, hard, ids)).encode()))
    q, p = unit_rows(rng, BATCH, DIM), unit_rows(rng, BATCH, DIM)
    h = unit_rows(rng, BATCH, HARD, DIM) if hard else None
    id_args = dict(query_ids=QUERY_IDS, document_ids=DOCUMENT_IDS) if ids else {}
    if ids and hard:
        id_args["hard_negative_ids"] = HARD_NEGATIVE_IDS
    options = dict(same_tower=same_tower, bidirectional=bidirectional)

    variables = [tf.Variable(x, dtype=tf.float32) for x in (q, p) + ((h,) if hard else ())]
    with tf.GradientTape() as tape:
        loss = samtone_loss(*variables, temperature=TAU, **options, **id_args)
        total = tf.reduce_sum(loss)
    grads = tape.gradient(total, variables)

    expected = reference_samtone(q, p, h, tau=TAU, **options, **id_args)
    assert loss.dtype == tf.float32 and loss.shape == (BATCH,)
    np.testing.assert_allclose(loss.numpy(), expected, atol=1e-5, rtol=0)

    def total_reference(*arrays):
        return reference_samtone(*arrays, tau=TAU, **options, **id_args).sum()

    arrays = [q, p] + ([h] if hard else [])
    for got, want in zip(grads, finite_difference_gradient(total_reference, arrays)):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=0)


def test_masking_changes_the_loss_only_for_rows_sharing_ids():
    rng = np.random.default_rng(0)
    q, p = unit_rows(rng, BATCH, DIM), unit_rows(rng, BATCH, DIM)
    options = dict(temperature=TAU, same_tower="both", bidirectional=True)
    plain = samtone_loss(q, p, **options).numpy()
    masked = samtone_loss(q, p, query_ids=QUERY_IDS, document_ids=DOCUMENT_IDS, **options).numpy()
    sharing = [0, 1, 2, 4]
    assert np.all(masked[sharing] < plain[sharing])
    np.testing.assert_allclose(masked[[3, 5]], plain[[3, 5]], atol=1e-6)


def test_hard_negatives_that_are_positives_of_the_same_query_are_not_negatives():
    rng = np.random.default_rng(3)
    q, p = unit_rows(rng, BATCH, DIM), unit_rows(rng, BATCH, DIM)
    h = unit_rows(rng, BATCH, HARD, DIM)
    options = dict(temperature=TAU, same_tower="query", query_ids=QUERY_IDS, document_ids=DOCUMENT_IDS)
    plain = samtone_loss(q, p, h, **options).numpy()
    masked = samtone_loss(q, p, h, hard_negative_ids=HARD_NEGATIVE_IDS, **options).numpy()
    assert np.all(masked[[0, 1, 2, 4]] < plain[[0, 1, 2, 4]])
    np.testing.assert_allclose(masked[[3, 5]], plain[[3, 5]], atol=1e-6)
    with pytest.raises(ValueError, match="need document_ids"):
        samtone_loss(q, p, h, hard_negative_ids=HARD_NEGATIVE_IDS, temperature=TAU)
    with pytest.raises(ValueError, match=r"hard_negative_ids must be \[B, H\]"):
        samtone_loss(q, p, h, hard_negative_ids=HARD_NEGATIVE_IDS[:, :1], temperature=TAU, document_ids=DOCUMENT_IDS)
    with pytest.raises(ValueError, match="one kind"):
        samtone_loss(q, p, h, hard_negative_ids=np.zeros((BATCH, HARD), np.int64), temperature=TAU,
                     document_ids=DOCUMENT_IDS)


def test_string_and_integer_ids_mask_alike():
    rng = np.random.default_rng(1)
    q, p = unit_rows(rng, BATCH, DIM), unit_rows(rng, BATCH, DIM)
    as_ints = samtone_loss(q, p, document_ids=[0, 1, 2, 3, 0, 5], temperature=TAU)
    as_strings = samtone_loss(q, p, document_ids=DOCUMENT_IDS, temperature=TAU)
    np.testing.assert_allclose(as_ints.numpy(), as_strings.numpy(), atol=1e-6)


def test_none_equals_sparse_softmax_cross_entropy():
    rng = np.random.default_rng(2)
    q, p = unit_rows(rng, 32, 16).astype(np.float32), unit_rows(rng, 32, 16).astype(np.float32)
    ours = samtone_loss(q, p, temperature=0.05, same_tower="none")
    logits = tf.matmul(q, p, transpose_b=True) / 0.05
    theirs = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.range(32), logits=logits)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    rng = np.random.default_rng(3)
    q, p = unit_rows(rng, 8, 16), unit_rows(rng, 8, 16)
    half_q, half_p = tf.cast(q, dtype), tf.cast(p, dtype)
    loss = samtone_loss(half_q, half_p, temperature=0.05)
    assert loss.dtype == tf.float32
    # The reference sees exactly the rounded inputs: the only error left is float32's.
    expected = reference_samtone(
        tf.cast(half_q, tf.float64).numpy(), tf.cast(half_p, tf.float64).numpy(),
        tau=0.05, same_tower="query", bidirectional=False,
    )
    np.testing.assert_allclose(loss.numpy(), expected, atol=1e-5)


def test_large_logits_stay_finite():
    # Temperature 0.001 puts logits near 1000: a naive exp would overflow.
    rng = np.random.default_rng(4)
    q, p = unit_rows(rng, 8, 4), unit_rows(rng, 8, 4)
    loss = samtone_loss(q, p, temperature=1e-3, same_tower="both", bidirectional=True)
    assert np.all(np.isfinite(loss.numpy()))


def test_tensor_temperature_matches_float_temperature():
    rng = np.random.default_rng(5)
    q, p = unit_rows(rng, 8, 4), unit_rows(rng, 8, 4)
    log_scale = tf.Variable(np.log(0.07), dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = samtone_loss(q, p, temperature=tf.exp(log_scale))
    np.testing.assert_allclose(loss.numpy(), samtone_loss(q, p, temperature=0.07).numpy(), atol=1e-5)
    assert tape.gradient(loss, log_scale) is not None


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(same_tower="queries"), "same_tower"),
        (dict(same_tower="document"), "bidirectional"),
        (dict(same_tower="both"), "bidirectional"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(query=np.zeros((4,), np.float32)), "query must have rank 2"),
        (dict(document=np.zeros((4, 8, 1), np.float32)), "document must have rank 2"),
        (dict(document=np.zeros((3, 8), np.float32)), "document batch"),
        (dict(document=np.zeros((4, 7), np.float32)), "document dimension"),
        (dict(hard_negatives=np.zeros((4, 8), np.float32)), "hard_negatives must have rank 3"),
        (dict(hard_negatives=np.zeros((3, 2, 8), np.float32)), "hard_negatives batch"),
        (dict(hard_negatives=np.zeros((4, 2, 7), np.float32)), "hard_negatives dimension"),
        (dict(query_ids=[1, 2, 3]), "query_ids length"),
        (dict(document_ids=[[1, 2, 3, 4]]), "document_ids must have rank 1"),
        (dict(query_ids=[0.5, 1.5, 2.5, 3.5]), "query_ids must be integers or strings"),
        (dict(query=np.zeros((4, 8), np.int32)), "floating point"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, message):
    args = dict(query=np.ones((4, 8), np.float32), document=np.ones((4, 8), np.float32))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        samtone_loss(args.pop("query"), args.pop("document"), args.pop("hard_negatives", None), **args)


def test_keras_loss_reduces_per_example_losses_and_reads_ids_and_temperature():
    rng = np.random.default_rng(6)
    q, p = unit_rows(rng, BATCH, DIM), unit_rows(rng, BATCH, DIM)
    h = unit_rows(rng, BATCH, HARD, DIM)
    loss = SamToNeLoss(temperature=TAU, same_tower="both", bidirectional=True)
    y_true = {"query_id": QUERY_IDS, "document_id": DOCUMENT_IDS}
    value = loss(y_true, {"query": q, "document": p, "hard_negatives": h})
    expected = reference_samtone(
        q, p, h, tau=TAU, same_tower="both", bidirectional=True,
        query_ids=QUERY_IDS, document_ids=DOCUMENT_IDS,
    ).mean()
    np.testing.assert_allclose(float(value), expected, atol=1e-5)
    # The model holds the temperature: a loss without one takes y_pred's (a learnt one, a variable, too)...
    model_held = SamToNeLoss(temperature=None, same_tower="both", bidirectional=True)
    for temperature in (tf.constant(0.2), tf.Variable(0.2)):
        value = model_held(None, {"query": q, "document": p, "temperature": temperature})
        expected = reference_samtone(q, p, tau=0.2, same_tower="both", bidirectional=True).mean()
        np.testing.assert_allclose(float(value), expected, atol=1e-5)
    # ...and one given another fixed temperature than the model's refuses, rather than silently using either.
    with pytest.raises(ValueError, match="the model's temperature 0.2 differs from the loss's 0.1"):
        loss(None, {"query": q, "document": p, "temperature": tf.constant(0.2)})
    with pytest.raises(ValueError, match="y_pred has no 'temperature'"):
        model_held(None, {"query": q, "document": p})


def test_keras_loss_config_round_trip():
    loss = SamToNeLoss(temperature=0.02, same_tower="document", bidirectional=True, name="stn")
    restored = SamToNeLoss.from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, SamToNeLoss) and revived.get_config() == loss.get_config()


def test_keras_loss_rejects_outputs_that_are_not_a_dict():
    with pytest.raises(ValueError, match="y_pred must be a dict"):
        SamToNeLoss()(None, np.ones((4, 8), np.float32))
