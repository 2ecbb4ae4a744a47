"""Batched text -> embeddings: length-sorted batches, a progress bar, optional XLA for the network.

Used by every consumer of a tower or an exported encoder: evaluation, export, analysis (and mining and the
corpus-encoding pipeline to come). Knows nothing of models beyond "a callable on tf.string [b]".
"""

from __future__ import annotations

import contextlib
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
        rows = order[start : start + batch_size]
        embeddings = np.asarray(encode_batch(tf.constant([texts[i] for i in rows])))
        if out is None:
            out = np.zeros((len(texts), embeddings.shape[1]), np.float32)
        out[rows] = embeddings
        progress.add(len(rows))
    return out if out is not None else np.zeros((0, 0), np.float32)


def progress_verbosity(verbose):
    """Keras Progbar verbosity: a live bar on a terminal, one final line in logs, or silence."""
    if not verbose:
        return 0
    return 1 if sys.stdout.isatty() else 2


_INFERENCE_FUNCTIONS = weakref.WeakKeyDictionary()
LENGTH_BUCKET = 32  # token lengths rounded up to a multiple of this when the network is compiled (XLA)


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
            pad_id = tower.tokenizer.pad_id

            def encode(texts):
                tokens = tokenize(texts)
                ids, mask = tokens["token_ids"], tokens["padding_mask"]
                length = ids.shape[1]
                padded = min(-(-length // LENGTH_BUCKET) * LENGTH_BUCKET, tower.tokenizer.max_length)
                extra = [[0, 0], [0, max(padded - length, 0)]]
                return network(tf.pad(ids, extra, constant_values=pad_id), tf.pad(mask, extra))

            functions[True] = encode
    return functions[jit_compile]


# Towers whose network runs XLA-compiled while `compiled_networks` is active (a global, not a thread-local:
# MirroredStrategy traces each replica in its own thread).
_COMPILED_NETWORKS = {}


def tower_network(tower):
    """The tower's token ids -> embeddings function: XLA-compiled inside `compiled_networks`."""
    return _COMPILED_NETWORKS.get(id(tower), tower.encode_tokens)


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
