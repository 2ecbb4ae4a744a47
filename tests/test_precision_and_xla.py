"""Mixed precision (bf16, fp16 with loss scaling) and the XLA-compiled step: the same losses as float32 and
the eager step, training that lowers the loss, float32 checkpoints and exports."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.data.pipeline import training_dataset
from samtone_tf.encoding import LENGTH_BUCKET
from samtone_tf.model.towers import tiny_dual_encoder
from samtone_tf.serving import export, run_like_tf_serving
from samtone_tf.training import step as step_module
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.step import compile_for_training, make_train_step, precision_policy
from tests.helpers import TINY_VOCABULARY, mirrored_strategy
from tests.test_training import pairs

# Trains beyond a few steps, exports SavedModels or starts subprocesses: out of the fast loop.
pytestmark = pytest.mark.slow

CONFIG = TrainConfig(model="tiny", batch_size=8, hard_negatives=2, steps=20, learning_rate=1e-3)
TEXTS = ["who sat on the mat", "the dog was in the mat", ""]


def build(precision, length_bucket=1):
    precision_policy(precision)
    try:
        model = tiny_dual_encoder(TINY_VOCABULARY, "ade", dropout=0.0)
        compile_for_training(model, CONFIG)
    finally:
        precision_policy("none")
    dataset = training_dataset(pairs(), 8, seed=0, hard_negatives=2,
                               tokenize=lambda t: model.tokenize_inputs(t, length_bucket))
    return model, dataset


@pytest.fixture(scope="module")
def float32_first_loss():
    """The float32 step's loss on the first batch (the same data and initialisation as every `build`)."""
    reference, dataset = build("none")
    return float(make_train_step(tf.distribute.get_strategy(), reference)(next(iter(dataset))))


@pytest.mark.parametrize("precision,tolerance", [("bf16", 0.05), ("fp16", 0.01)])
def test_mixed_precision_steps_match_float32_and_train(precision, tolerance, float32_first_loss):
    reference_loss = float32_first_loss
    model, dataset = build(precision)
    assert model.query_tower.backbone.compute_dtype == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert all(v.dtype == "float32" for v in model.weights if "seed" not in v.path)
    if precision == "fp16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    step = make_train_step(tf.distribute.get_strategy(), model)
    losses = [step(b) for b, _ in zip(dataset, range(12))]
    assert losses[0] == pytest.approx(reference_loss, rel=tolerance)
    assert np.mean(losses[-3:]) < losses[0]
    # Exports of a mixed-precision model serve float32 embeddings equal to the in-memory model.
    import tempfile
    from pathlib import Path

    out = Path(tempfile.mkdtemp()) / "export"
    export(model, out, verbose=False)
    served = run_like_tf_serving(out / "query_encoder" / "1", TEXTS)["embedding"]
    assert served.dtype == np.float32
    # Both compute in the low precision (the served graph and the eager tower round differently): bf16 keeps
    # 8 significant bits (relative 2^-8 = 0.004 on entries up to ~0.4), fp16 11.
    np.testing.assert_allclose(served, model.query_tower(tf.constant(TEXTS)).numpy(),
                               atol={"bf16": 4e-3, "fp16": 1e-3}[precision])


@pytest.mark.parametrize("gradient_cache_chunk", [None, 3])
def test_the_compiled_step_equals_the_eager_step(gradient_cache_chunk):
    results = []
    for jit in (False, True):
        model, dataset = build("none", length_bucket=LENGTH_BUCKET)
        step = make_train_step(tf.distribute.get_strategy(), model, gradient_cache_chunk, jit_compile=jit)
        losses = [step(b) for b, _ in zip(dataset, range(4))]
        results.append((losses, [w.numpy() for w in model.trainable_weights], step.compilations()))
    (eager_losses, eager_weights, _), (jit_losses, jit_weights, compilations) = results
    np.testing.assert_allclose(jit_losses, eager_losses, atol=1e-4)
    for got, want in zip(jit_weights, eager_weights):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert 1 <= compilations <= 2  # bucketed lengths: one compilation per distinct batch shape


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    monkeypatch.setattr(step_module, "cpu_has_native_bf16", lambda: False)
    try:
        assert "emulated" in precision_policy("bf16")
    finally:
        precision_policy("none")
    monkeypatch.setattr(step_module, "cpu_has_native_bf16", lambda: True)
    try:
        assert precision_policy("bf16") is None
    finally:
        precision_policy("none")


def test_under_two_replicas_the_compiled_towers_step_equals_the_eager_step():
    results = []
    for jit in (False, True):
        strategy = mirrored_strategy(2)
        with strategy.scope():
            model, dataset = build("none", length_bucket=LENGTH_BUCKET)
        # Static per-replica shapes: each global batch of 8 split into 2 × 4.
        dataset = strategy.experimental_distribute_dataset(dataset.unbatch().batch(8, drop_remainder=True))
        step = make_train_step(strategy, model, jit_compile=jit)
        losses = [step(b) for b, _ in zip(dataset, range(3))]
        results.append((losses, [w.numpy() for w in model.trainable_weights], step.compilations(), step.compiled))
    (eager_losses, eager_weights, _, _), (jit_losses, jit_weights, compilations, compiled) = results
    np.testing.assert_allclose(jit_losses, eager_losses, atol=1e-4)
    for got, want in zip(jit_weights, eager_weights):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert compiled == "the towers' networks" and compilations >= 1


def test_the_command_with_xla_and_bf16_on_one_device_and_under_mirrored(tmp_path):
    import sys

    from tests.helpers import CommandInBackground

    def start(name, *extra):
        return CommandInBackground([sys.executable, "-m", "samtone_tf.train", "--model", "tiny", "--eval_datasets",
                                    "", "--steps", "4", "--batch_size", "8", "--no-export", "--log_every", "2",
                                    "--model_dir", str(tmp_path / name), *extra], tmp_path, name)

    # The two runs side by side: XLA's compilations are mostly single-threaded.
    compiling = start("a", "--jit_compile", "--mixed_precision", "bf16")
    mirroring = start("b", "--jit_compile", "--strategy", "mirrored", "--cpu_replicas", "2")
    compiled, mirrored = compiling.finish(), mirroring.finish()
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert "step 4/4" in compiled.stdout and "XLA compilations of the replica step: 1" in compiled.stdout
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    assert "step 4/4" in mirrored.stdout and "XLA compilations of the towers' networks:" in mirrored.stdout


def test_fp16_with_gradient_caching_scales_the_loss_and_trains_the_weights_of_the_uncached_fp16_step():
    """Keras's LossScaleOptimizer divides the gradients by its loss scale; the cached step must multiply the loss
    by it first, as Keras's train_step does (else Adam's moments come out ~3e4 times too small, and nothing warns:
    the loss still falls)."""
    results = []
    for chunk in (None, 3):
        model, dataset = build("fp16")
        optimizer = model.optimizer
        # A scale at which neither step overflows (at Keras's initial 32768 the uncached one skips a step here), so
        # both apply the same 3 updates; scaling still decides the moments' size (x256 here).
        optimizer.dynamic_scale.assign(256.0)
        step = make_train_step(tf.distribute.get_strategy(), model, gradient_cache_chunk=chunk)
        losses = [step(b) for b, _ in zip(dataset, range(3))]
        moments = [v.numpy() for v in optimizer.inner_optimizer.variables if "momentum" in v.path]
        results.append((losses, [w.numpy() for w in model.trainable_weights], moments,
                        float(optimizer.dynamic_scale.numpy())))
    (uncached_losses, uncached_weights, uncached_moments, uncached_scale), \
        (cached_losses, cached_weights, cached_moments, cached_scale) = results
    assert cached_scale == uncached_scale
    np.testing.assert_allclose(cached_losses, uncached_losses, rtol=5e-3)
    assert uncached_moments and len(cached_moments) == len(uncached_moments)
    # Adam's first moments over all weights: equal up to fp16 rounding (unscaled, they would be 256 times smaller).
    got = np.concatenate([m.ravel() for m in cached_moments])
    want = np.concatenate([m.ravel() for m in uncached_moments])
    assert np.linalg.norm(got - want) < 0.05 * np.linalg.norm(want)
    # Weights after 3 Adam steps (learning rate up to 1e-3 a step): a gradient entry near fp16's rounding can take
    # another sign in the two computations and move its weight by up to a step; all the others agree closely.
    differences = np.concatenate([np.abs(g - w).ravel() for g, w in zip(cached_weights, uncached_weights)])
    assert differences.max() < 3e-3 and np.mean(differences < 1e-4) > 0.995, (differences.max(),
                                                                              np.mean(differences < 1e-4))
