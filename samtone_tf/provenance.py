"""Fingerprints that prove what made an artifact: which tower (its weights and vocabulary) and which corpus.

Embeddings, indexes and exports record them; `evaluate --index_dir`, `export --index` and `export --check` compare
them, so another model's embeddings (even of a nearly identical checkpoint) or another corpus with the same ids is
refused by name, not by a hope that a sample looks alike.

- A tower's fingerprint: SHA-256 of its float weights (dtype, shape and bytes, in the tower's own order) and of its
  vocabulary's tokens. The same from the Keras tower (`tower_fingerprint`) and from any SavedModel we export of it
  (`saved_model_fingerprint`: the weights the SavedModel tracks and its vocabulary asset). Dropout seed states
  (integers that move with every training step) are not weights and do not count.
- A corpus's fingerprint: the sum, modulo 2^256, of SHA-256(id NUL text) over its documents: independent of their
  order, so workers of a Beam pipeline can each add theirs, and the same whichever reader produced the texts.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from samtone_tf.text import read_vocabulary

_MODULUS = 1 << 256


def _digest(arrays, vocabulary):
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(b"vocabulary\0")
    digest.update("\n".join(vocabulary).encode("utf-8"))
    return digest.hexdigest()


def _float_arrays(variables):
    return [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in variables
            if np.dtype(getattr(v.dtype, "as_numpy_dtype", v.dtype)).kind == "f"]


def tower_fingerprint(tower):
    """The fingerprint (hex) of a Keras `EncoderTower`: its float weights and its tokenizer's vocabulary."""
    return _digest(_float_arrays([v.value for v in tower.variables]), tower.tokenizer.vocabulary)


def saved_model_fingerprint(path, loaded=None):
    """The fingerprint (hex) of the tower inside one of our SavedModels (an encoder, or a retriever's query
    tower): the weights it tracks as `tower_variables` and the vocabulary asset of its tokenizer. Equal to
    `tower_fingerprint` of the tower that was exported. `loaded`: the SavedModel, when already loaded."""
    import tensorflow as tf

    loaded = loaded if loaded is not None else tf.saved_model.load(str(path))
    variables = getattr(loaded, "tower_variables", None)
    if variables is None:
        raise ValueError(f"{path}: not a samtone_tf SavedModel (it tracks no tower_variables)")
    assets = os.path.join(str(path), "assets")
    files = sorted(os.listdir(assets)) if os.path.isdir(assets) else []
    if len(files) != 1:
        raise ValueError(f"{path}: expected one vocabulary asset, found {len(files)} ({', '.join(files)})")
    return _digest(_float_arrays(list(variables)), read_vocabulary(os.path.join(assets, files[0])))


def document_digest(doc_id, text):
    """SHA-256 of one document (id NUL text): 32 bytes."""
    return hashlib.sha256(f"{doc_id}\0{text}".encode("utf-8")).digest()


def combine_digests(digests, start=0):
    """The corpus fingerprint (as an int) of `digests` (32-byte document digests), added to `start`."""
    total = start
    for digest in digests:
        total = (total + int.from_bytes(digest, "big")) % _MODULUS
    return total


def corpus_fingerprint(documents):
    """The fingerprint (hex) of documents given as (id, text) pairs."""
    return f"{combine_digests(document_digest(i, t) for i, t in documents):064x}"


def fingerprint_hex(total):
    return f"{total:064x}"


def encoder_document_fingerprint(encoder):
    """The document tower's fingerprint of anything `evaluate` takes: a DualEncoder, or an export
    (`ExportedEncoder`: the fingerprint its manifest records, else computed from its document encoder)."""
    if hasattr(encoder, "document_tower"):
        return tower_fingerprint(encoder.document_tower)
    recorded = ((getattr(encoder, "manifest", None) or {}).get("provenance") or {}).get("document_encoder")
    if recorded:
        return recorded
    return saved_model_fingerprint(encoder.paths["document_encoder"])


def short(fingerprint):
    return str(fingerprint)[:12] + "…" if fingerprint else "none recorded"
