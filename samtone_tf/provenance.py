"""Fingerprints that prove what made an artifact: which tower (its weights and vocabulary) and which corpus.

Embeddings, indexes and exports record them; `evaluate --index_dir`, `export --index` and `export --check` compare
them, so another model's embeddings (even of a nearly identical checkpoint) or another corpus with the same ids is
refused by name, not by a hope that a sample looks alike.

- A tower's fingerprint: SHA-256 of its float weights (dtype, shape and bytes, in the tower's own order) and of its
  vocabulary's tokens (`weights_digest`; `model.fingerprint` computes it from a Keras tower or a SavedModel).
- A corpus's fingerprint: the sum, modulo 2^256, of SHA-256(id NUL text) over its documents: independent of their
  order, so workers of a Beam pipeline can each add theirs, and the same whichever reader produced the texts.
"""

from __future__ import annotations

import hashlib

import numpy as np

_MODULUS = 1 << 256


def weights_digest(arrays, vocabulary):
    """SHA-256 (hex) of arrays (dtype, shape and bytes, in order) and a vocabulary's tokens."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(b"vocabulary\0")
    digest.update("\n".join(vocabulary).encode("utf-8"))
    return digest.hexdigest()


def float_arrays(variables):
    """The float variables (or arrays) of `variables`, as NumPy arrays, in order."""
    return [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in variables
            if np.dtype(getattr(v.dtype, "as_numpy_dtype", v.dtype)).kind == "f"]


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


def short(fingerprint):
    return str(fingerprint)[:12] + "…" if fingerprint else "none recorded"
