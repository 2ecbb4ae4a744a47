"""Cross-replica SamToNe: gathered negatives equal the single-device loss on the whole batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from samtone_tf import SamToNeLoss, SamToNeModel, samtone_loss
from tests.helpers import free_ports, mirrored_strategy
from tests.linear_dual_encoder import (
    DIM,
    GLOBAL_BATCH,
    INPUT_DIM,
    OPTIONS,
    distributed_step,
    make_batch,
    make_weights,
    single_device_reference,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("replicas", [2, 4])
def test_mirrored_losses_and_gradients_equal_single_device(replicas):
    batch = make_batch()
    expected_losses, expected_grads = single_device_reference(batch)

    strategy = mirrored_strategy(replicas)
    losses, grads = distributed_step(strategy)
    got_losses = np.concatenate([x.numpy() for x in strategy.experimental_local_results(losses)])
    np.testing.assert_allclose(got_losses, expected_losses, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        for replica_value in strategy.experimental_local_results(got):
            np.testing.assert_allclose(replica_value.numpy(), want, atol=1e-5)


def test_mirrored_gradients_reach_every_replicas_embeddings():
    rng = np.random.default_rng(7)
    # Unit rows, as towers produce: gradients of order 1/temperature.
    q, p = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in rng.normal(size=(2, GLOBAL_BATCH, DIM)))
    q, p = q.astype(np.float32), p.astype(np.float32)
    qv, pv = tf.Variable(q), tf.Variable(p)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(samtone_loss(qv, pv, **OPTIONS))
    want_q, want_p = tape.gradient(total, [qv, pv])

    strategy = mirrored_strategy(2)
    local = GLOBAL_BATCH // 2
    parts = strategy.experimental_distribute_values_from_function(
        lambda c: (q[c.replica_id_in_sync_group * local :][:local], p[c.replica_id_in_sync_group * local :][:local])
    )

    @tf.function
    def step(part):
        def replica_fn(part):
            lq, lp = part
            with tf.GradientTape() as tape:
                tape.watch([lq, lp])
                total = tf.reduce_sum(samtone_loss(lq, lp, **OPTIONS))
            return tape.gradient(total, [lq, lp])

        return strategy.run(replica_fn, args=(part,))

    got_q, got_p = step(parts)
    np.testing.assert_allclose(
        np.concatenate([x.numpy() for x in strategy.experimental_local_results(got_q)]), want_q, atol=1e-5
    )
    np.testing.assert_allclose(
        np.concatenate([x.numpy() for x in strategy.experimental_local_results(got_p)]), want_p, atol=1e-5
    )


def build_keras_dual_encoder():
    query_in = keras.Input((INPUT_DIM,), name="query")
    document_in = keras.Input((INPUT_DIM,), name="document")
    wq, wp = make_weights()
    query_dense = keras.layers.Dense(DIM, use_bias=False)
    document_dense = keras.layers.Dense(DIM, use_bias=False)
    normalize = keras.layers.UnitNormalization()
    outputs = {
        "query": normalize(query_dense(query_in)),
        "document": normalize(document_dense(document_in)),
    }
    model = SamToNeModel({"query": query_in, "document": document_in}, outputs)
    query_dense.set_weights([wq])
    document_dense.set_weights([wp])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=SamToNeLoss(**OPTIONS))
    return model


def fit_history(strategy):
    batch = make_batch()
    x = {"query": batch["xq"], "document": batch["xp"]}
    y = {"query_id": batch["query_ids"], "document_id": batch["document_ids"]}
    # Three steps of the same global batch: later losses depend on the earlier gradients.
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat(3)
    with strategy.scope():
        model = build_keras_dual_encoder()
    history = model.fit(dataset, epochs=1, verbose=0)
    return history.history["loss"][0], [w.numpy() for w in model.weights]


def test_keras_fit_under_mirrored_strategy_reports_the_single_device_loss():
    single_loss, single_weights = fit_history(tf.distribute.get_strategy())
    mirrored_loss, mirrored_weights = fit_history(
        mirrored_strategy(2)
    )
    batch = make_batch()
    first_step = single_device_reference(batch)[0].mean()
    assert single_loss != pytest.approx(first_step, abs=1e-4)  # training moved the weights
    np.testing.assert_allclose(mirrored_loss, single_loss, atol=1e-5)
    for got, want in zip(mirrored_weights, single_weights):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_multi_worker_loss_equals_single_device(tmp_path):
    batch = make_batch()
    expected_losses, expected_grads = single_device_reference(batch)
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        env["PYTHONPATH"] = str(REPO)
        processes.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "multiworker_loss_worker.py"), str(tmp_path / f"w{index}.npz")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    results = [np.load(tmp_path / f"w{index}.npz") for index in range(2)]
    got_losses = np.concatenate([r["losses"] for r in results])
    np.testing.assert_allclose(got_losses, expected_losses, atol=1e-5)
    for r in results:
        np.testing.assert_allclose(r["grad_q"], expected_grads[0], atol=1e-5)
        np.testing.assert_allclose(r["grad_p"], expected_grads[1], atol=1e-5)
