"""Query/positives/negatives JSONL, the FlagEmbedding and sentence-transformers training
format: {"query": str, "pos": [str, ...], "neg": [str, ...], ...}. One training pair per
positive; the negatives are its hard negatives. Ids are derived from the texts."""

from __future__ import annotations

from samtone_tf.data.errors import DataError
from samtone_tf.data.ids import text_id
from samtone_tf.data.records import TrainingPair
from samtone_tf.data.textfiles import read_jsonl, require


def _texts(path, number, record, key, required):
    values = record.get(key, [] if not required else None)
    if values is None:
        raise DataError(path, number, f"missing field {key!r}")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise DataError(path, number, f"field {key!r} must be a list of strings")
    if required and not values:
        raise DataError(path, number, f"field {key!r} is empty")
    for index, value in enumerate(values):
        if not value.strip():
            raise DataError(path, number, f"{key}[{index}] is an empty text")
    return values


def flagembedding_training_pairs(path):
    pairs = []
    for number, record in read_jsonl(path):
        query = require(path, number, record, "query")
        positives = _texts(path, number, record, "pos", required=True)
        negatives = tuple(_texts(path, number, record, "neg", required=False))
        for positive in positives:
            pairs.append(TrainingPair(text_id("q", query), query, text_id("d", positive), positive, negatives))
    return pairs
