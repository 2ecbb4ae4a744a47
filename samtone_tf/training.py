"""Training, shared by the training command, the benchmarks and library users: `TrainConfig` (every setting
of a run, validated, JSON round trip), the optimizer and its schedule, and the train step.

The train step IS Keras's `Model.train_step` of a `DualEncoder` compiled with `SamToNeLoss`: the code path a
user of `model.fit` runs. `make_train_step` runs it on every replica of a tf.distribute strategy on batches
already tokenised by the input pipeline (`DualEncoder.tokenize_inputs`), so the replica step sees integer
tensors only; the loss is the mean over the global batch.
"""

from __future__ import annotations

import dataclasses
import json

import keras
import tensorflow as tf

from samtone_tf import optimizers
from samtone_tf.encoding import LENGTH_BUCKET  # noqa: F401  (re-exported: the step pads to it as encoding does)
from samtone_tf.encoding import compiled_networks, whole_batches
from samtone_tf.keras_loss import SamToNeLoss
from samtone_tf.losses import SAME_TOWER_OPTIONS

ARCHITECTURES = ("sde", "ade", "ade_spl", "ade_ste", "ade_fte")
OPTIMIZERS = ("adamw", "adafactor")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
ID_KEYS = ("query_id", "document_id", "hard_negative_ids")
PRECISION_POLICIES = {"none": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


DEFAULT_DATASET = "reqa:squad"


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run (the options of `python -m samtone_tf.train`, same names)."""

    dataset: str = DEFAULT_DATASET
    train_split: str = "train"
    max_train_pairs: int | None = None  # a seeded sample of this many pairs from the whole file; None: all pairs
    first_train_pairs: int | None = None  # the first pairs in file order instead (read lazily); None: see above
    eval_datasets: list = dataclasses.field(default_factory=list)
    data_dir: str | None = None
    unique_ids: bool = True
    model: str = "all-MiniLM-L6-v2"
    models_dir: str | None = None
    vocabulary: str | None = None
    num_layers: int | None = None
    architecture: str = "sde"
    projection_dim: int | None = None
    pooling: str | None = None
    query_max_length: int = 32
    document_max_length: int = 64
    same_tower: str = "query"
    bidirectional: bool = False
    temperature: float = 0.05
    learnable_temperature: bool = False
    hard_negatives: int = 0
    dropout: float | None = None  # None: the checkpoint's rate
    gradient_cache_chunk: int | None = None  # None: no gradient caching
    length_groups: int = 8  # rows of similar length encoded together (DualEncoder(length_groups)); 1: batch whole
    mixed_precision: str = "none"  # "bf16" or "fp16": Keras mixed-precision policies
    jit_compile: bool = False  # the replica step compiled with XLA
    batch_size: int = 32
    steps: int = 50
    optimizer: str = "adamw"
    learning_rate: float = 3e-5
    warmup_steps: int | None = None  # None: 10% of steps
    weight_decay: float = 0.01
    seed: int = 0
    strategy: str = "default"
    cpu_replicas: int | None = None
    tpu: str | None = None
    model_dir: str = "runs/default"
    checkpoint_every: int = 10
    eval_every: int = 0
    log_every: int = 10
    eval_batch_size: int = 128
    export: bool = True
    samtone_tf_version: str | None = None

    def __post_init__(self):
        if self.warmup_steps is None and isinstance(self.steps, int):
            self.warmup_steps = max(1, self.steps // 10)
        if isinstance(self.eval_datasets, str):
            self.eval_datasets = [name for name in self.eval_datasets.split(",") if name]
        problems = []
        for name in ("query_max_length", "document_max_length", "batch_size", "steps", "checkpoint_every",
                     "log_every", "eval_batch_size", "length_groups"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        for name in ("hard_negatives", "eval_every", "seed", "warmup_steps"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                problems.append(f"{name} must be a non-negative integer; got {getattr(self, name)!r}")
        if self.dropout is not None and not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            problems.append(f"dropout must be in [0, 1); got {self.dropout!r}")
        for name in ("max_train_pairs", "first_train_pairs", "num_layers", "projection_dim", "cpu_replicas",
                     "gradient_cache_chunk"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                problems.append(f"{name} must be a positive integer or None; got {value!r}")
        if self.max_train_pairs is not None and self.first_train_pairs is not None:
            problems.append("max_train_pairs (a sample of the whole file) and first_train_pairs (its head) exclude "
                            "each other")
        for name in ("temperature", "learning_rate"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                problems.append(f"{name} must be positive; got {getattr(self, name)!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            problems.append(f"weight_decay must be non-negative; got {self.weight_decay!r}")
        for name, allowed in (("architecture", ARCHITECTURES), ("same_tower", SAME_TOWER_OPTIONS),
                              ("optimizer", OPTIMIZERS), ("strategy", STRATEGIES), ("pooling", (None, "mean", "cls")),
                              ("mixed_precision", tuple(PRECISION_POLICIES))):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")
        if self.same_tower in ("document", "both") and not self.bidirectional:
            problems.append(f"same_tower {self.same_tower!r} needs bidirectional")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, values):
        """The configuration of `values` (e.g. a run's config.json); keys it does not know are ignored, so
        configurations written by other versions still load."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    @property
    def schedule(self):
        return WarmupLinearDecay(self.learning_rate, self.warmup_steps, self.steps)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def compile_for_training(model, config):
    """Compiles `model` (a DualEncoder) with the configuration's optimizer and SamToNeLoss, building the
    optimizer's state (so a checkpoint can restore it). Under a float16 policy Keras wraps the optimizer in a
    LossScaleOptimizer (dynamic loss scaling). -> the model's optimizer."""
    optimizer = make_optimizer(config, config.schedule)
    model.compile(optimizer=optimizer, loss=SamToNeLoss(temperature=config.temperature, same_tower=config.same_tower,
                                                        bidirectional=config.bidirectional))
    model.optimizer.build(model.trainable_variables)
    return model.optimizer


def precision_policy(mixed_precision):
    """Sets Keras's global dtype policy for models built next: "none" (float32), "bf16" (mixed_bfloat16:
    TPUs, recent GPUs, CPUs with AVX-512 BF16 or AMX) or "fp16" (mixed_float16, with loss scaling: GPUs).
    Variables stay float32 (checkpoints and exports too); the loss and its logits are computed in float32.
    -> a warning (str) when bf16 is asked on a CPU without native bf16 (emulated there, and slow), else None."""
    keras.mixed_precision.set_dtype_policy(PRECISION_POLICIES[mixed_precision])
    if mixed_precision == "bf16" and not tf.config.list_logical_devices("GPU") and not _cpu_has_bf16():
        return ("--mixed_precision bf16 on a CPU without native bf16 (avx512_bf16 or amx_bf16): it is emulated "
                "and slower than float32 here")
    return None


def _cpu_has_bf16():
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


EMBEDDING_KEYS = ("query", "document", "hard_negatives")


def seed_states(model):
    """The state variables of the model's random seed generators (dropout): restoring them replays the masks."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _rows(inputs, start, count):
    """`count` rows of every input from row `start` (a tensor in a loop)."""
    return {key: _slice_rows(value, start, count) for key, value in inputs.items()}


def _slice_rows(tensor, start, count):
    """tensor[start : start + count] with its static shape kept (`count` is a Python int; a slice with tensor
    bounds has no static size, which XLA cannot compile)."""
    rank = len(tensor.shape)
    rows = tf.slice(tensor, tf.stack([start] + [0] * (rank - 1)), [count] + [-1] * (rank - 1))
    return tf.ensure_shape(rows, _with_rows(count, tensor))


def _with_rows(count, tensor):
    """The shape of `tensor` with `count` rows."""
    return tf.TensorShape([count]).concatenate(tensor.shape[1:])


def gradient_cached_gradients(model, x, y, chunk, cut_lengths=True):
    """Loss and gradients of one step by gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning
    Batch Size under Memory Limited Setup"), on this replica's rows.

    1. Embed the rows `chunk` at a time without a tape (no activations kept), noting each chunk's seed state.
    2. The loss on all the embeddings (gathered across replicas inside the loss, as always), and its gradient
       with respect to this replica's embeddings (and the learnable temperature).
    3. Re-embed each chunk under a tape with the same seed state (the same dropout masks) and back-propagate
       the cached embedding gradients: sum(embedding * gradient) has the weights' gradient of the loss; the
       chunks' gradients are summed as they come, as dense tensors (embedding lookups' sparse slices included).
    Each pass is the first chunk (the uneven one when `chunk` does not divide the rows) then a `tf.while_loop`
    over the others, one iteration at a time: the graph holds two copies of the tower whatever the number of
    chunks (an unrolled loop grows with them, and its runtime started chunks side by side, holding their
    activations at once). With `cut_lengths`, each side's rows (queries, documents, hard negatives) are sorted
    by their own length, longest first, before they are cut into chunks (chunk i holds the i-th longest queries
    and the i-th longest documents: an embedding depends on its own text only), and each chunk is encoded whole,
    each side cut to its own longest row: a chunk of sorted rows is a length group already (the towers' own
    groups, one copy of the network each, stay off).
    -> (loss, [dense gradient per model.trainable_variables]), the gradients those of the loss as the model's
    optimizer scales it (`optimizer.scale_loss`: under fp16 the loss scale, which its `apply` divides out); equal
    to the uncached step's (with dropout off:
    with dropout, the masks are drawn per chunk, not for the whole batch), whose embedding gradients are
    tf.IndexedSlices of the same sums.
    """
    variables = model.trainable_variables
    seeds = seed_states(model)
    size = next(iter(x.values())).shape[0]
    if size is None:
        raise ValueError("gradient caching needs a static per-replica batch size (the pipeline drops remainders)")
    chunk = min(int(chunk), size)
    first = size - (size - 1) // chunk * chunk  # rows of the first chunk: the remainder, or a whole chunk
    loops = (size - first) // chunk

    orders = _length_orders(x) if cut_lengths else {}
    rows_of = {key: _in_order(value, _order_of(key, orders)) for key, value in x.items()}

    def chunk_rows(start, count):
        rows = _rows(rows_of, start, count)
        return _cut_to_longest(rows) if cut_lengths else rows

    def encode(inputs):
        if not cut_lengths:
            return model(inputs, training=True)
        with whole_batches():
            return model(inputs, training=True)

    def embed(inputs):
        snapshot = [tf.identity(v.value) for v in seeds]
        outputs = encode(inputs)
        return snapshot, {key: tf.stop_gradient(outputs[key]) for key in EMBEDDING_KEYS if key in outputs}

    first_snapshot, first_outputs = embed(chunk_rows(0, first))
    keys = list(first_outputs)
    first_pieces = [first_outputs[key] for key in keys]

    def embed_chunk(i, snapshots, pieces):
        snapshot, outputs = embed(chunk_rows(first + i * chunk, chunk))
        return (i + 1, [ta.write(i, value) for ta, value in zip(snapshots, snapshot)],
                [ta.write(i, outputs[key]) for ta, key in zip(pieces, keys)])

    _, snapshots, pieces = tf.while_loop(
        lambda i, *_: i < loops, embed_chunk,
        [_after(first_pieces, tf.constant(0)),
         [tf.TensorArray(v.dtype, size=loops, element_shape=v.shape) for v in seeds],
         [tf.TensorArray(p.dtype, size=loops, element_shape=_with_rows(chunk, p)) for p in first_pieces]],
        parallel_iterations=1)
    after_first_pass = [tf.identity(v.value) for v in seeds]
    embeddings = {key: tf.ensure_shape(_append(piece, rest, loops), _with_rows(size, piece))
                  for key, piece, rest in zip(keys, first_pieces, pieces)}
    with tf.GradientTape() as tape:
        tape.watch(list(embeddings.values()))
        # The loss sees the rows in the batch's order; its gradients come back in the chunks' (sorted) order.
        y_pred = {key: _in_order(value, _order_of(key, orders), inverse=True) for key, value in embeddings.items()}
        if getattr(model, "learnable_temperature", False):
            y_pred["temperature"] = model.current_temperature()
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred)
        # As Keras's train_step: under fp16 the optimizer (a LossScaleOptimizer) multiplies the loss by its scale
        # here, so the towers' float16 backward passes do not underflow, and divides the gradients by it (skipping
        # the step and lowering the scale when one is not finite) in `apply`. Identity for other optimizers.
        scaled_loss = model.optimizer.scale_loss(loss) if getattr(model, "optimizer", None) is not None else loss
    temperature_variables = [v for v in variables if "temperature" in v.path]
    cached = tape.gradient(scaled_loss, [embeddings[key] for key in keys] + temperature_variables)
    embedding_gradients = {key: g for key, g in zip(keys, cached[: len(keys)]) if g is not None}

    def backpropagate(start, count, snapshot):
        for variable, value in zip(seeds, snapshot):
            variable.assign(value)
        with tf.GradientTape() as tape:
            outputs = encode(chunk_rows(start, count))
            surrogate = tf.add_n([tf.reduce_sum(tf.cast(outputs[key], tf.float32) * _slice_rows(gradient, start, count))
                                  for key, gradient in embedding_gradients.items()])
        return _dense(tape.gradient(surrogate, variables), variables)

    first_gradients = backpropagate(0, first, first_snapshot)
    present = [index for index, g in enumerate(first_gradients) if g is not None]

    def backpropagate_chunk(i, sums):
        chunk_gradients = backpropagate(first + i * chunk, chunk, [ta.read(i) for ta in snapshots])
        return i + 1, [total + chunk_gradients[index] for total, index in zip(sums, present)]

    _, sums = tf.while_loop(lambda i, _: i < loops, backpropagate_chunk,
                            [_after([first_gradients[i] for i in present], tf.constant(0)),
                             [first_gradients[i] for i in present]], parallel_iterations=1)
    for variable, value in zip(seeds, after_first_pass):
        variable.assign(value)
    gradients = [None] * len(variables)
    for index, total in zip(present, sums):
        gradients[index] = total
    for variable, gradient in zip(temperature_variables, cached[len(keys):]):
        if gradient is not None:
            index = next(i for i, v in enumerate(variables) if v is variable)
            gradients[index] = gradient if gradients[index] is None else gradients[index] + gradient
    return loss, [tf.zeros_like(v) if g is None else g for g, v in zip(gradients, variables)]


SIDES = ("hard_negatives", "query", "document")  # the prefixes of the model's inputs and its embeddings' keys


def _length_orders(x):
    """{side: its rows by length, longest first} for each side of `x` with a padding mask (a row of hard
    negatives by its longest negative); {} when `x` holds no tokenized text (raw strings are encoded as they
    come)."""
    orders = {}
    for side in SIDES:
        mask = x.get(f"{side}_padding_mask")
        if mask is None:
            continue
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1)
        if lengths.shape.rank == 2:  # [rows, H]
            lengths = tf.reduce_max(lengths, axis=-1)
        orders[side] = tf.argsort(lengths, direction="DESCENDING", stable=True)
    return orders


def _order_of(key, orders):
    """The order of an input's or an embedding's rows: its side's, else the documents' (None: the batch's)."""
    side = next((side for side in SIDES if key.startswith(side)), None)
    return orders.get(side, orders.get("document"))


def _in_order(tensor, order, inverse=False):
    """The rows of `tensor` in `order` (or, `inverse`, back from it); `tensor` itself when `order` is None."""
    if order is None:
        return tensor
    return tf.gather(tensor, tf.math.invert_permutation(order) if inverse else order)


def _cut_to_longest(inputs):
    """`inputs` with each side's token ids and padding mask ([rows, L] or, for hard negatives, [rows, H, L]) cut
    to the longest row among them: padding is inert (attention and pooling skip it), so the embeddings are the
    same, and fewer positions are computed."""
    cut = dict(inputs)
    for mask_key in [key for key in inputs if key.endswith("_padding_mask")]:
        ids_key = mask_key[: -len("_padding_mask")] + "_token_ids"
        if ids_key not in inputs:
            continue
        mask = inputs[mask_key]
        longest = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1)), 1)
        cut[mask_key], cut[ids_key] = mask[..., :longest], inputs[ids_key][..., :longest]
    return cut


def _dense(gradients, variables):
    """`gradients` with embedding lookups' sparse slices (tf.IndexedSlices, one row per token) summed into dense
    tensors: a running sum over chunks then holds one table-sized tensor, where the slices grow with the batch
    (at 4096 pairs, a row per token of every chunk). Our optimizers (`optimizers.AdamW`, `Adafactor`) sum a
    slice's rows before updating, so a dense sum and the uncached step's slices give the same update (Keras's
    own optimizers would not: see `samtone_tf.optimizers`)."""
    return [tf.ensure_shape(tf.convert_to_tensor(g), v.shape) if isinstance(g, tf.IndexedSlices) else g
            for g, v in zip(gradients, variables)]


def _append(first, rest, size):
    """The rows of tensor `first` then those of TensorArray `rest` of `size` elements (a Python int: an empty
    TensorArray cannot be concatenated eagerly)."""
    return tf.concat([first, rest.concat()], axis=0) if size else first


def _after(dependencies, tensor):
    """`tensor`, computed only once every tensor of `dependencies` has been: a loop started from it waits for
    them (its iterations would otherwise start as soon as their own inputs are ready)."""
    with tf.control_dependencies(dependencies):
        return tf.identity(tensor)


def gradient_cached_step(model, x, y, chunk, cut_lengths=True):
    """`gradient_cached_gradients`, then the optimizer's update. -> this replica's loss value."""
    loss, gradients = gradient_cached_gradients(model, x, y, chunk, cut_lengths)
    model.optimizer.apply(gradients, model.trainable_variables)
    return loss


def all_finite(model):
    """Whether every weight of the model is finite (checked before each checkpoint)."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.weights if "float" in str(v.dtype))


def make_optimizer(config, schedule):
    """The configuration's optimizer on `schedule`: AdamW (no decay of biases, norms and the temperature)
    or Adafactor, each updating embedding rows with their summed gradient (`optimizers`)."""
    if config.optimizer == "adafactor":
        return optimizers.Adafactor(learning_rate=schedule)
    optimizer = optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "layer_norm", "temperature"])
    return optimizer


@keras.saving.register_keras_serializable(package="samtone_tf")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over the first `warmup_steps` steps, then linear decay over the rest, so that
    every one of the `total_steps` steps takes a positive rate: step n (1-based) takes peak * n / warmup_steps
    while n <= warmup_steps, then peak * (total_steps - n + 1) / (total_steps - warmup_steps); the last step takes
    peak / (total_steps - warmup_steps), and 0 would come one step after it. From the end of warm-up on these are
    the rates of transformers' get_linear_schedule_with_warmup (sentence-transformers' default), whose warm-up
    starts at 0 instead (a first step that changes nothing).

    Its position is the optimizer's iteration count (the steps already taken), so a resumed run continues it
    exactly.
    """

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)

    def __call__(self, iterations):
        step = tf.cast(iterations, tf.float32) + 1.0  # the 1-based step this rate is for
        warmup = self.peak * step / max(self.warmup_steps, 1)
        remaining = max(self.total_steps - self.warmup_steps, 1)
        decay = self.peak * tf.maximum(0.0, (self.total_steps - step + 1.0) / remaining)
        return tf.where(step <= self.warmup_steps, warmup, decay)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps)
