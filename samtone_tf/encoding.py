"""Batched text -> embeddings: length-sorted batches, a progress bar, optional XLA for the network.

Used by every consumer of a tower or an exported encoder: evaluation, export, analysis, mining and the Beam
corpus-encoding pipeline. Knows nothing of models beyond "a callable on tf.string [b]"; it also holds the one
length-bucketing rule (`padded_to_bucket`) that XLA-compiled networks and the training pipeline share.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import weakref

import keras
import numpy as np
import tensorflow as tf


def encode_texts(tower, texts, batch_size=64, verbose=True, what="texts", jit_compile=False):
    """Embeds a list of strings with a tower in batches -> np.ndarray [N, D].

    With `jit_compile`, the network (not the tokenizer, whose ops XLA cannot
    compile) runs under XLA, with sequence lengths rounded up to a multiple of 32
    so that few shapes get compiled.
    """
    return encode_in_batches(_compiled_encoder(tower, jit_compile), texts, batch_size, verbose, what)


def encode_in_batches(encode_batch, texts, batch_size=64, verbose=True, what="texts"):
    """Applies `encode_batch` (tf.string [b] -> [b, D]) to `texts` in batches -> np.ndarray [N, D].

    Texts are encoded longest first so that each batch pads little; the rows come
    back in the input order.
    """
    texts = [str(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    progress = keras.utils.Progbar(len(texts), unit_name=what, verbose=progress_verbosity(verbose))
    out = None
    for start in range(0, len(texts), batch_size):
        if any(stopping() for stopping in _STOP_CHECKS):
            raise EncodingStopped(f"encoding stopped after {start} of {len(texts)} {what}")
        rows = order[start : start + batch_size]
        embeddings = np.asarray(encode_batch(tf.constant([texts[i] for i in rows])))
        if out is None:
            out = np.zeros((len(texts), embeddings.shape[1]), np.float32)
        out[rows] = embeddings
        progress.add(len(rows))
    return out if out is not None else np.zeros((0, 0), np.float32)


class EncodingStopped(Exception):
    """Raised by `encode_in_batches`, between two batches, inside `stop_encoding_when(stopping)` once `stopping()`
    is true."""


_STOP_CHECKS = []


@contextlib.contextmanager
def stop_encoding_when(stopping):
    """While active, `encode_in_batches` asks `stopping()` before every batch and raises `EncodingStopped` when it
    is true: a training run told to stop leaves an evaluation within one batch (seconds) instead of finishing the
    corpus (minutes at full size), and saves its step before a scheduler's grace period ends."""
    _STOP_CHECKS.append(stopping)
    try:
        yield
    finally:
        _STOP_CHECKS.remove(stopping)


def progress_verbosity(verbose):
    """Keras Progbar verbosity: a live bar on a terminal, one final line in logs, or silence."""
    if not verbose:
        return 0
    return 1 if sys.stdout.isatty() else 2


_INFERENCE_FUNCTIONS = weakref.WeakKeyDictionary()
LENGTH_BUCKET = 32  # token lengths rounded up to a multiple of this when the network is compiled (XLA)


def padded_to_bucket(tokens, tokenizer, bucket=LENGTH_BUCKET):
    """The one length-bucketing rule: a tokenizer's output (token_ids [B, L], padding_mask [B, L]) padded to the
    next multiple of `bucket`, at most the tokenizer's max length, so compiled networks see few distinct shapes.
    -> (token_ids [B, L'], padding_mask [B, L'])."""
    ids, mask = tokens["token_ids"], tokens["padding_mask"]
    length = tf.shape(ids)[1]
    target = tf.minimum((length + bucket - 1) // bucket * bucket, tokenizer.max_length)
    extra = [[0, 0], [0, tf.maximum(target - length, 0)]]
    return tf.pad(ids, extra, constant_values=tokenizer.pad_id), tf.pad(mask, extra, constant_values=False)


def _compiled_encoder(tower, jit_compile=False):
    """One traced inference function per tower and mode, kept outside the layer's tracked state."""
    functions = _INFERENCE_FUNCTIONS.setdefault(tower, {})
    if jit_compile not in functions:
        if not jit_compile:
            functions[False] = tf.function(
                lambda texts: tower(texts, training=False),
                input_signature=[tf.TensorSpec([None], tf.string)],
            )
        else:
            tokenize = tf.function(tower.tokenizer, input_signature=[tf.TensorSpec([None], tf.string)])
            network = tf.function(
                lambda ids, mask: tower.encode_tokens(ids, mask, training=False), jit_compile=True
            )

            def encode(texts):
                return network(*padded_to_bucket(tokenize(texts), tower.tokenizer))

            functions[True] = encode
    return functions[jit_compile]


# Towers whose network runs XLA-compiled while `compiled_networks` is active (a global, not a thread-local:
# MirroredStrategy traces each replica in its own thread).
_COMPILED_NETWORKS = {}


def tower_network(tower, length_groups=1):
    """The tower's token ids -> embeddings function: XLA-compiled inside `compiled_networks` (fixed shapes: the
    batch as padded), else, with `length_groups` > 1, run in groups of rows of similar length
    (`encode_in_length_groups`)."""
    if id(tower) in _COMPILED_NETWORKS:
        return _COMPILED_NETWORKS[id(tower)]
    if length_groups <= 1:
        return tower.encode_tokens
    return functools.partial(encode_in_length_groups, tower.encode_tokens, groups=length_groups)


def encode_in_length_groups(encode, token_ids, padding_mask, groups=8, min_rows=4, training=None):
    """`encode(token_ids, padding_mask, training=...)` of a batch padded to its longest row, computed in `groups`
    sub-batches of rows of similar length, each cut to its own longest row.

    token_ids int [B, L], padding_mask [B, L] (true on each row's first tokens) -> the embeddings [B, D], rows in
    the input order. The rows are sorted by length and split into `groups` runs of (nearly) equal size, at least
    `min_rows` each (fewer groups for a small batch; none for a batch of unknown size). The mask makes padding
    inert (attention and mean pooling skip it), so the embeddings are the whole batch's, within float rounding,
    while the positions computed fall from B x longest to the sum over groups of rows x that group's longest.
    Mixed data gains the most: without it, one long document pads every short one of its batch to its length.
    Group sizes are static, so a traced step keeps its row counts; the cut lengths are not, so a function XLA
    compiles (`jit_compile`, TPUs) encodes the batch whole.
    """
    bounds = length_group_bounds(token_ids.shape[0], groups, min_rows)
    if len(bounds) <= 2 or _compiled_by_xla() or _WHOLE_BATCHES:
        return encode(token_ids, padding_mask, training=training)
    lengths = tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1)
    order = tf.argsort(lengths, direction="DESCENDING", stable=True)
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        rows = order[start:end]
        cut = tf.maximum(lengths[order[start]], 1)  # the group's longest row: the first, in descending order
        pieces.append(encode(tf.gather(token_ids, rows)[:, :cut], tf.gather(padding_mask, rows)[:, :cut],
                             training=training))
    return tf.gather(tf.concat(pieces, axis=0), tf.math.invert_permutation(order))


_WHOLE_BATCHES = []


@contextlib.contextmanager
def whole_batches():
    """While active (when a step is traced), the towers encode a batch whole, not in length groups: for a caller
    whose batches are already rows of similar length cut to their longest (the gradient-cached step's sorted
    chunks). Length groups are a Python loop, one copy of the network per group in the traced graph; the cached
    step encodes each chunk four times, so groups inside its chunks multiplied its graph, time and memory."""
    _WHOLE_BATCHES.append(True)
    try:
        yield
    finally:
        _WHOLE_BATCHES.pop()


def length_group_bounds(size, groups=8, min_rows=4):
    """Where `encode_in_length_groups` splits a batch of `size` rows sorted by length: [0, ..., size], one bound
    more than groups; [0, size] (one group: the batch whole) when fewer than 2 groups of `min_rows` fit, and
    [] when the batch size is unknown (None)."""
    if size is None:
        return []
    count = min(int(groups), size // max(int(min_rows), 1))
    if count <= 1:
        return [0, size]
    return [size * index // count for index in range(count + 1)]


def _compiled_by_xla():
    """Whether the function being traced is to be compiled by XLA (tf.function(jit_compile=True), a TPU replica
    step), where every shape must be static."""
    from tensorflow.python.framework import ops  # no public API tells; Keras 2 asked the same function
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


@contextlib.contextmanager
def compiled_networks(model, on_trace=None):
    """While active, the model's towers run their networks (token ids -> embeddings; not the tokenizer) as
    XLA-compiled functions; steps traced inside keep them. For multi-device strategies, whose cross-replica
    gathers in the loss XLA cannot hold on CPUs and GPUs: the towers (nearly all of a step's work, forward and
    backward) compile, the loss does not. `on_trace()` is called at each compilation."""
    functions = _compiled_network_functions(model, on_trace)
    _COMPILED_NETWORKS.update(functions)
    try:
        yield
    finally:
        for key in functions:
            _COMPILED_NETWORKS.pop(key, None)


def _compiled_network_functions(model, on_trace):
    """{id(tower): XLA-compiled encode_tokens}, made once per model (kept out of Keras's tracking) so that steps
    reuse their compilations; `on_trace` is the latest caller's."""
    cache = model.__dict__.setdefault("_samtone_compiled_networks", {"on_trace": None, "functions": {}})
    cache["on_trace"] = on_trace
    for tower in (model.query_tower, model.document_tower):
        if id(tower) not in cache["functions"]:
            def encode(token_ids, padding_mask, training=None, tower=tower):
                if cache["on_trace"] is not None:
                    cache["on_trace"]()
                return tower.encode_tokens(token_ids, padding_mask, training=training)

            cache["functions"][id(tower)] = tf.function(encode, jit_compile=True)
    return cache["functions"]
