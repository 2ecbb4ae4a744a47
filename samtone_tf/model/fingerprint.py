"""A tower's fingerprint (`provenance.weights_digest` of its float weights and vocabulary), the same from the Keras
tower (`tower_fingerprint`) and from any SavedModel we export of it (`saved_model_fingerprint`: the weights the
SavedModel tracks and its vocabulary asset). Dropout seed states (integers that move with every training step) are
not weights and do not count."""

from __future__ import annotations

import os

from samtone_tf.model.text import read_vocabulary
from samtone_tf.provenance import float_arrays, weights_digest


def tower_fingerprint(tower):
    """The fingerprint (hex) of a Keras `EncoderTower`: its float weights and its tokenizer's vocabulary."""
    return weights_digest(float_arrays([v.value for v in tower.variables]), tower.tokenizer.vocabulary)


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
    return weights_digest(float_arrays(list(variables)), read_vocabulary(os.path.join(assets, files[0])))


def encoder_document_fingerprint(encoder):
    """The document tower's fingerprint of anything `evaluate` takes: a DualEncoder, or an export
    (`ExportedEncoder`: the fingerprint its manifest records, else computed from its document encoder)."""
    if hasattr(encoder, "document_tower"):
        return tower_fingerprint(encoder.document_tower)
    recorded = ((getattr(encoder, "manifest", None) or {}).get("provenance") or {}).get("document_encoder")
    if recorded:
        return recorded
    return saved_model_fingerprint(encoder.paths["document_encoder"])
