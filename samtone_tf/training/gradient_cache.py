"""Gradient caching (Gao et al., 2021): the loss and gradients of a whole batch with the activations of one chunk
of rows in memory at a time. The towers embed every chunk without a tape; the loss's gradient with respect to the
embeddings is taken once on the whole batch; then each chunk is encoded again under a tape and its embeddings'
gradient pulled back through the towers. Rows are grouped by length first, so each chunk is cut to its longest
row; dropout replays the same masks in both passes (the seed generators' states are restored).
"""

from __future__ import annotations

import tensorflow as tf

from samtone_tf.encoding import whole_batches


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

    Long because: the two passes must replay the same dropout masks and row orders; the state they share (seed
    snapshots, orders, chunk pieces) stays in one scope.
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
        y_pred["temperature"] = model.current_temperature()  # as DualEncoder.call outputs it, fixed or learnt
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
    own optimizers would not: see `samtone_tf.training.optimizers`)."""
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

