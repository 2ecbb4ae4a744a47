"""The train step: Keras's `Model.train_step` of a `DualEncoder` compiled with `SamToNeLoss`, the code path a user of
`model.fit` runs. `make_train_step` runs it on every replica of a tf.distribute strategy on batches already
tokenised by the input pipeline (`DualEncoder.tokenize_inputs`), so the replica step sees integer tensors only;
the loss is the mean over the global batch. With a chunk size, the gradient-cached step (`gradient_cache`) instead.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from samtone_tf.encoding import compiled_networks
from samtone_tf.keras_loss import SamToNeLoss
from samtone_tf.losses import matryoshka_dimensions
from samtone_tf.options import PRECISION_POLICIES
from samtone_tf.training.config import ID_KEYS
from samtone_tf.training.gradient_cache import gradient_cached_step
from samtone_tf.training.optimizers import make_optimizer


def compile_for_training(model, config):
    """Compiles `model` (a DualEncoder) with the configuration's optimizer and SamToNeLoss, building the
    optimizer's state (so a checkpoint can restore it). Under a float16 policy Keras wraps the optimizer in a
    LossScaleOptimizer (dynamic loss scaling). The loss takes the model's temperature (the model holds it: fixed
    or learnt, from the configuration that built it). -> the model's optimizer."""
    optimizer = make_optimizer(config, config.schedule)
    if config.matryoshka_dims:  # checked against the model's dimension now, not at the first step
        matryoshka_dimensions(model.query_tower.output_dim, config.matryoshka_dims, config.matryoshka_weights)
    model.compile(optimizer=optimizer, loss=SamToNeLoss(temperature=None, same_tower=config.same_tower,
                                                        bidirectional=config.bidirectional,
                                                        matryoshka_dims=config.matryoshka_dims,
                                                        matryoshka_weights=config.matryoshka_weights))
    model.optimizer.build(model.trainable_variables)
    return model.optimizer


def precision_policy(mixed_precision):
    """Sets Keras's global dtype policy for models built next: "none" (float32), "bf16" (mixed_bfloat16:
    TPUs, recent GPUs, CPUs with AVX-512 BF16 or AMX) or "fp16" (mixed_float16, with loss scaling: GPUs).
    Variables stay float32 (checkpoints and exports too); the loss and its logits are computed in float32.
    -> a warning (str) when bf16 is asked on a CPU without native bf16 (emulated there, and slow), else None."""
    keras.mixed_precision.set_dtype_policy(PRECISION_POLICIES[mixed_precision])
    if mixed_precision == "bf16" and not tf.config.list_logical_devices("GPU") and not cpu_has_native_bf16():
        return ("--mixed_precision bf16 on a CPU without native bf16 (avx512_bf16 or amx_bf16): it is emulated "
                "and slower than float32 here")
    return None


def cpu_has_native_bf16():
    """Whether the CPU computes bf16 natively (avx512_bf16 or AMX); True when it cannot tell (no warning then)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return True  # cannot tell: do not warn
    return "avx512_bf16" in flags or "amx_bf16" in flags


def split_batch(batch):
    """A pipeline batch -> Keras's (x, y): model inputs, and the ids the loss masks with."""
    x = {key: value for key, value in batch.items() if key not in ID_KEYS}
    y = {key: batch[key] for key in ID_KEYS if key in batch}
    return x, y


def make_train_step(strategy, model, gradient_cache_chunk=None, jit_compile=False, element_spec=None):
    """One optimisation step of `model` (compiled by `compile_for_training`) on every replica of
    `strategy`: Keras's own `train_step`, or with `gradient_cache_chunk` the gradient-cached step (same loss
    and gradients, activations of one chunk of rows at a time). With `jit_compile` (feed it batches whose
    lengths are bucketed: `tokenize_inputs(length_bucket=...)`), XLA compiles the replica step on one device
    (and on TPUs), and under multi-device strategies the towers' networks (`encoding.compiled_networks`): the loss's
    cross-replica gathers cannot run inside an XLA cluster on CPUs and GPUs. `element_spec` (the dataset's, with
    None for the padded lengths and the per-replica batch size filled in: `pipeline.per_replica_element_spec`)
    makes the eager-mode step trace once for every batch length; without it (or when the spec lacks the batch
    size, as multi-worker datasets' own spec does), it traces a second time when the lengths first change
    (about as long as the first trace).
    -> step(batch) returning the mean loss over the global batch (a Python float); `step.compilations` counts
    the XLA compilations (traces of what is compiled: one per distinct batch shape)."""
    traces = []
    compile_replica_step = jit_compile and (strategy.num_replicas_in_sync == 1
                                            or isinstance(strategy, tf.distribute.TPUStrategy))
    compile_towers = jit_compile and not compile_replica_step

    def replica_step(x, y):
        if compile_replica_step:
            traces.append(1)  # runs once per trace, not per step
        if gradient_cache_chunk:
            # XLA needs static shapes: a compiled step keeps its chunks at the bucketed length.
            return gradient_cached_step(model, x, y, gradient_cache_chunk, cut_lengths=not jit_compile)
        model.train_step((x, y))  # the loss is in the model's metrics
        return None

    replica = tf.function(replica_step, jit_compile=True) if compile_replica_step else replica_step

    # Compiled steps keep one trace per bucketed shape: XLA needs static shapes and the log counts them. A spec
    # without the batch size (a multi-worker dataset's own) would lose the static batch the loss needs.
    signature = None
    if element_spec is not None and not jit_compile and all(
            spec.shape.rank and spec.shape[0] is not None
            for spec in tf.nest.flatten(element_spec, expand_composites=True)):
        signature = [element_spec]

    @tf.function(reduce_retracing=not jit_compile, input_signature=signature)
    def replicated(batch):
        x, y = split_batch(batch)
        losses = strategy.run(replica, args=(x, y))
        if losses is None:  # Keras's train_step: nothing to reduce
            return None
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def run(batch):
        if not compile_towers:
            return replicated(batch)
        with compiled_networks(model, on_trace=lambda: traces.append(1)):
            return replicated(batch)

    def step(batch):
        if gradient_cache_chunk:
            return float(run(batch))
        model.reset_metrics()
        run(batch)
        return float(model.get_metrics_result()["loss"])

    step.traced = replicated
    step.compilations = lambda: len(traces)
    step.compiled = "the towers' networks" if compile_towers else "the replica step" if jit_compile else None
    return step


def all_finite(model):
    """Whether every weight of the model is finite (checked before each checkpoint)."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.weights if "float" in str(v.dtype))

