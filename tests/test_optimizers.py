"""The optimizers update an embedding row with Adam's moments of its summed gradient, as dense Adam (and
PyTorch) does, when the lookup's gradient holds the row several times (a token repeated in the batch)."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from samtone_tf.training import optimizers

TABLE = np.random.default_rng(0).normal(size=(6, 3))
INDICES = np.array([1, 4, 1, 1, 0])  # row 1 three times
VALUES = np.random.default_rng(1).normal(size=(len(INDICES), 3))


def numpy_adamw(table, dense_gradients, lr=0.1, weight_decay=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Keras's AdamW (decoupled decay first, then Adam with its bias correction), float64."""
    w, m, v = table.copy(), np.zeros_like(table), np.zeros_like(table)
    for step, g in enumerate(dense_gradients, start=1):
        w -= lr * weight_decay * w
        m += (g - m) * (1 - beta_1)
        v += (g * g - v) * (1 - beta_2)
        alpha = lr * np.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step)
        w -= m * alpha / (np.sqrt(v) + epsilon)
    return w


def summed(indices, values):
    dense = np.zeros_like(TABLE)
    np.add.at(dense, indices, values)
    return dense


def run(optimizer, gradients):
    variable = keras.Variable(TABLE.astype("float32"))
    for gradient in gradients:
        optimizer.apply([gradient], [variable])
    return variable.numpy()


def slices(scale=1.0):
    return tf.IndexedSlices(tf.constant(VALUES * scale, tf.float32), tf.constant(INDICES), tf.constant(TABLE.shape))


def test_adamw_updates_repeated_rows_with_their_summed_gradient():
    got = run(optimizers.AdamW(learning_rate=0.1, weight_decay=0.01), [slices(), slices(-0.5)])
    want = numpy_adamw(TABLE, [summed(INDICES, VALUES), summed(INDICES, -0.5 * VALUES)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_keras_stock_adamw_differs_on_repeated_rows():
    """Why the module exists: Keras's own AdamW squares the rows before summing them (if Keras changes this,
    the override is no longer needed)."""
    got = run(keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.01), [slices(), slices(-0.5)])
    want = numpy_adamw(TABLE, [summed(INDICES, VALUES), summed(INDICES, -0.5 * VALUES)])
    assert np.abs(got[1] - want[1]).max() > 1e-3  # the repeated row
    np.testing.assert_allclose(np.delete(got, 1, axis=0), np.delete(want, 1, axis=0), atol=1e-5)


@pytest.mark.parametrize("name", ["AdamW", "Adafactor"])
def test_slices_and_their_dense_sum_give_the_same_update(name):
    dense = tf.constant(summed(INDICES, VALUES), tf.float32)
    from_slices = run(getattr(optimizers, name)(learning_rate=0.1), [slices(), slices(2.0)])
    from_dense = run(getattr(optimizers, name)(learning_rate=0.1), [dense, 2.0 * dense])
    np.testing.assert_allclose(from_slices, from_dense, atol=1e-6)
