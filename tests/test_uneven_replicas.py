"""Replicas holding different numbers of rows (a last partial batch, uneven shards, an empty replica):
the loss, its gradients and Keras's reduction equal one device on the concatenated batch."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from samtone_tf import SamToNeLoss, SamToNeModel, samtone_loss
from tests.helpers import mirrored_strategy
from tests.reference_loss import reference_samtone

DIM, HARD, TAU = 4, 2, 0.1
GLOBAL = 5
QUERY_IDS = np.array([b"q0", b"q1", b"q0", b"q3", b"q1"])
DOCUMENT_IDS = np.array([0, 1, 2, 3, 4], np.int64)
# Row 0's first hard negative is row 2's positive (same query q0); row 3's is row 1's positive.
HARD_NEGATIVE_IDS = np.array([[2, 90], [91, 92], [93, 94], [1, 95], [96, 97]], np.int64)
SPLITS = {2: [3, 2], 3: [3, 0, 2]}


def unit(rng, *shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def combinations():
    for same_tower, bidirectional, hard, ids in itertools.product(
            ("none", "query", "document", "both"), (False, True), (False, True), (False, True)):
        if same_tower in ("document", "both") and not bidirectional:
            continue
        yield same_tower, bidirectional, hard, ids


@pytest.fixture(scope="module", params=sorted(SPLITS))
def strategy(request):
    return mirrored_strategy(request.param)


@pytest.mark.parametrize("same_tower,bidirectional,hard,ids", list(combinations()))
def test_uneven_local_batches_equal_one_device(strategy, same_tower, bidirectional, hard, ids):
    rng = np.random.default_rng(len(SPLITS[strategy.num_replicas_in_sync]))
    q, p, h = unit(rng, GLOBAL, DIM), unit(rng, GLOBAL, DIM), unit(rng, GLOBAL, HARD, DIM)
    options = dict(same_tower=same_tower, bidirectional=bidirectional)
    id_args = dict(query_ids=QUERY_IDS, document_ids=DOCUMENT_IDS) if ids else {}
    if ids and hard:
        id_args["hard_negative_ids"] = HARD_NEGATIVE_IDS
    arrays = {"q": q, "p": p, **({"h": h} if hard else {}), **id_args}

    expected = reference_samtone(q, p, h if hard else None, tau=TAU, **options, **id_args)
    variables = [tf.Variable(a) for a in (q, p) + ((h,) if hard else ())]
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(samtone_loss(*variables, temperature=TAU, **options, **id_args))
    expected_grads = [g.numpy() for g in tape.gradient(total, variables)]

    sizes = SPLITS[strategy.num_replicas_in_sync]
    starts = np.cumsum([0] + sizes)
    parts = strategy.experimental_distribute_values_from_function(
        lambda c: {k: v[starts[c.replica_id_in_sync_group]:starts[c.replica_id_in_sync_group + 1]]
                   for k, v in arrays.items()})

    @tf.function
    def step(part):
        def replica_fn(part):
            embeddings = [part["q"], part["p"]] + ([part["h"]] if hard else [])
            with tf.GradientTape() as tape:
                tape.watch(embeddings)
                losses = samtone_loss(*embeddings, temperature=TAU, **options,
                                      **{k: part[k] for k in id_args})
                total = tf.reduce_sum(losses)
            return losses, tape.gradient(total, embeddings)

        return strategy.run(replica_fn, args=(part,))

    losses, grads = step(parts)
    got = np.concatenate([x.numpy() for x in strategy.experimental_local_results(losses)])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    for got_grad, want in zip(grads, expected_grads):
        got_grad = np.concatenate([x.numpy() for x in strategy.experimental_local_results(got_grad)])
        np.testing.assert_allclose(got_grad, want, atol=1e-4)


def _fit(strategy, rows=13, batch=8):
    """One epoch of Keras fit over `rows` rows in global batches of `batch` (the last one partial)."""
    rng = np.random.default_rng(5)
    xq, xp = rng.normal(size=(rows, 6)).astype(np.float32), rng.normal(size=(rows, 6)).astype(np.float32)
    ids = {"query_id": np.arange(rows) % 11, "document_id": np.arange(rows)}
    dataset = tf.data.Dataset.from_tensor_slices(({"query": xq, "document": xp}, ids)).batch(batch)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        query_in, document_in = keras.Input((6,), name="query"), keras.Input((6,), name="document")
        normalize = keras.layers.UnitNormalization()
        model = SamToNeModel({"query": query_in, "document": document_in},
                             {"query": normalize(keras.layers.Dense(4)(query_in)),
                              "document": normalize(keras.layers.Dense(4)(document_in))})
        model.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss=SamToNeLoss(temperature=TAU, same_tower="both", bidirectional=True))
    history = model.fit(dataset, epochs=2, verbose=0, shuffle=False)
    return history.history["loss"], [w.numpy() for w in model.weights]


def test_keras_fit_with_a_partial_last_batch_equals_one_device():
    one_loss, one_weights = _fit(tf.distribute.get_strategy())
    mirrored_loss, mirrored_weights = _fit(mirrored_strategy(2))
    np.testing.assert_allclose(mirrored_loss, one_loss, atol=1e-5)
    for got, want in zip(mirrored_weights, one_weights):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_keras_reduction_is_the_global_mean_on_uneven_replicas():
    strategy = mirrored_strategy(2)
    rng = np.random.default_rng(9)
    q, p = unit(rng, GLOBAL, DIM), unit(rng, GLOBAL, DIM)
    weights = np.array([1.0, 0.5, 2.0, 1.0, 0.0], np.float32)
    starts = [0, 3, 5]
    for reduction in ("sum_over_batch_size", "sum", "mean_with_sample_weight"):
        loss = SamToNeLoss(temperature=TAU, same_tower="query", reduction=reduction)
        expected = reference_samtone(q, p, tau=TAU, same_tower="query", bidirectional=False) * weights
        expected = {"sum": expected.sum(), "sum_over_batch_size": expected.sum() / GLOBAL,
                    "mean_with_sample_weight": expected.sum() / weights.sum()}[reduction]
        parts = strategy.experimental_distribute_values_from_function(
            lambda c: tuple(a[starts[c.replica_id_in_sync_group]:starts[c.replica_id_in_sync_group + 1]]
                            for a in (q, p, weights)))

        @tf.function
        def step(part):
            return strategy.run(lambda part: loss(None, {"query": part[0], "document": part[1]}, part[2]),
                                args=(part,))

        values = strategy.experimental_local_results(step(parts))
        # Keras's loss tracker takes replicas x value weighted by local rows: the global reduction.
        tracked = sum(2 * v.numpy() * n for v, n in zip(values, (3, 2))) / GLOBAL
        np.testing.assert_allclose(tracked, expected, rtol=1e-5)
        np.testing.assert_allclose(sum(v.numpy() for v in values), expected, rtol=1e-5)
