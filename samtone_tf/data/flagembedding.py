"""Query/positives/negatives JSONL, the FlagEmbedding and sentence-transformers training
format: {"query": str, "pos": [str, ...], "neg": [str, ...], ...}. One training pair per
positive; the negatives are its hard negatives. Ids are the record's own when it has them
("query_id", "pos_ids", "neg_ids", as `python -m samtone_tf.mine` writes), else derived from the
texts."""

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


def _ids(path, number, record, key, texts):
    ids = record.get(key)
    if ids is None:
        return None
    if not isinstance(ids, list) or len(ids) != len(texts) or not all(isinstance(i, (str, int)) for i in ids):
        raise DataError(path, number, f"field {key!r} must be a list of {len(texts)} ids, one per text")
    return [str(i) for i in ids]


def flagembedding_training_pairs(path):
    pairs = []
    for number, record in read_jsonl(path):
        query = require(path, number, record, "query")
        positives = _texts(path, number, record, "pos", required=True)
        negatives = tuple(_texts(path, number, record, "neg", required=False))
        query_id = str(record["query_id"]) if record.get("query_id") is not None else text_id("q", query)
        positive_ids = _ids(path, number, record, "pos_ids", positives) or [text_id("d", p) for p in positives]
        negative_ids = tuple(_ids(path, number, record, "neg_ids", negatives) or ())
        for positive, positive_id in zip(positives, positive_ids):
            pairs.append(TrainingPair(query_id, query, positive_id, positive, negatives, negative_ids))
    return pairs
