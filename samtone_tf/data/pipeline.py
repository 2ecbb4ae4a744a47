"""tf.data training pipelines over training pairs.

Every input pipeline (one per worker) runs the same seeded ordering of the pairs and
cuts it into GLOBAL batches; pipeline p keeps its slice of each global batch and
batches it per replica. So replica r of the global step sees rows
[r * per_replica, (r + 1) * per_replica) of the global batch — the order the
loss's label offsets assume — and, with `unique_ids`, no global batch repeats a
query id or a document id.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from samtone_tf.losses import id_fingerprints
from samtone_tf.data.records import TrainingPair

SHUFFLE_BUFFER = 100_000  # pairs of a streamed file shuffled together


def training_dataset(
    pairs,
    per_replica_batch,
    *,
    seed=0,
    hard_negatives=0,
    unique_ids=True,
    shuffle_buffer=SHUFFLE_BUFFER,
    input_context=None,
    repeat=True,
    skip_batches=0,
    tokenize=None,
):
    """A tf.data.Dataset of per-replica batches of dicts of tf.string:

        {"query": [b], "document": [b], "query_id": [b], "document_id": [b],
         "hard_negatives": [b, H], "hard_negative_ids": [b, H] (only when hard_negatives=H > 0)}

    Args:
      pairs: a sequence of `TrainingPair` (shuffled by a seeded permutation each
        epoch) or an iterable read afresh each pass (`StreamedPairs`, shuffled
        through a seeded buffer of `shuffle_buffer` pairs).
      per_replica_batch: b; batches are complete (drop remainder).
      seed: the shuffling seed; epoch e uses (seed, e).
      hard_negatives: H negatives per row, sampled (seeded) from each pair's own.
      unique_ids: keep every global batch free of repeated query or document ids.
      input_context: a `tf.distribute.InputContext` (from
        `strategy.distribute_datasets_from_function`); None for one pipeline and
        one replica.
      repeat: cycle through the pairs forever (else one pass).
      skip_batches: start after this many global batches (resuming a run at that
        step sees exactly the batches an uninterrupted run would).
      tokenize: optional function of the text inputs {"query", "document",
        "hard_negatives"} returning integer inputs (e.g. `DualEncoder.tokenize_inputs`),
        applied on the host in parallel; the batch then holds those and the ids as the
        loss's int64 fingerprints (`losses.id_fingerprints`): no string is left.

    Long because: one tf.data graph, read top to bottom (sample, dedupe ids, shuffle, batch, tokenise, shard); split
    up, its stages would pass half-built datasets between functions.
    """
    if per_replica_batch < 1:
        raise ValueError(f"per_replica_batch must be positive; got {per_replica_batch}")
    replicas = input_context.num_replicas_in_sync if input_context else 1
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline = input_context.input_pipeline_id if input_context else 0
    if replicas % pipelines:
        raise ValueError(f"{replicas} replicas cannot be split evenly over {pipelines} input pipelines")
    global_batch = per_replica_batch * replicas
    if unique_ids and isinstance(pairs, Sequence):
        distinct = min(len({p.query_id for p in pairs}), len({p.document_id for p in pairs}))
        if distinct < global_batch:
            raise ValueError(
                f"cannot fill a global batch of {global_batch} pairs with distinct query and document ids: "
                f"the training data has only {distinct}; use a smaller batch or turn unique ids off"
            )
    if hard_negatives and isinstance(pairs, Sequence):
        lacking = next((p for p in pairs if not p.hard_negatives), None)
        if lacking is not None:
            raise ValueError(
                f"hard_negatives={hard_negatives} but the pair of query {lacking.query_id!r} has none"
            )
    local_rows = global_batch // pipelines
    start = pipeline * local_rows

    def rows():
        rng = np.random.default_rng([seed, pipeline, 7919])  # for sampling hard negatives
        batches = global_batches(pairs, global_batch, seed, unique_ids, shuffle_buffer, repeat)
        try:
            for batch in itertools.islice(batches, skip_batches, None):
                for pair in batch[start : start + local_rows]:
                    yield _row(pair, hard_negatives, rng)
        except ValueError as error:
            # tf.data reports a generator's exception as an InvalidArgumentError wrapping its
            # traceback; keep the original (file, line, problem) for `raise_input_error`.
            _INPUT_ERRORS.append(error)
            raise

    signature = {key: tf.TensorSpec([], tf.string) for key in ("query", "document", "query_id", "document_id")}
    if hard_negatives:
        signature["hard_negatives"] = tf.TensorSpec([hard_negatives], tf.string)
        signature["hard_negative_ids"] = tf.TensorSpec([hard_negatives], tf.string)
    dataset = tf.data.Dataset.from_generator(rows, output_signature=signature)
    dataset = dataset.batch(per_replica_batch, drop_remainder=True)
    if tokenize is not None:
        def tokenized(batch):
            texts = {key: batch[key] for key in ("query", "document", "hard_negatives") if key in batch}
            # Ids as the loss's int64 fingerprints: the replica step then holds no string at all.
            ids = {key: id_fingerprints(value) for key, value in batch.items()
                   if key.endswith("_id") or key.endswith("_ids")}
            return {**tokenize(texts), **ids}

        dataset = dataset.map(tokenized, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


_INPUT_ERRORS = []


def raise_input_error(tf_error):
    """Re-raises the bad-input error (e.g. a DataError naming file and line) that a training
    dataset's generator raised, in place of the InvalidArgumentError tf.data wrapped it in;
    returns when the TensorFlow error had another cause."""
    if _INPUT_ERRORS:
        raise _INPUT_ERRORS.pop() from None


def distributed_training_dataset(strategy, pairs, global_batch, **options):
    """`training_dataset` for every input pipeline of `strategy` (per-replica batches of
    global_batch / replicas), via `strategy.distribute_datasets_from_function`."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"global batch {global_batch} is not divisible by {replicas} replicas")

    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(global_batch)
        return training_dataset(pairs, per_replica, input_context=input_context, **options)

    return strategy.distribute_datasets_from_function(dataset_fn)


def per_replica_element_spec(dataset, strategy, global_batch):
    """The element spec of `distributed_training_dataset(strategy, ..., global_batch)` with every replica's
    batch size filled in (global_batch / replicas rows).

    Multi-worker datasets leave the batch size None (TensorFlow allows workers a partial last batch); this
    pipeline drops remainders, so every batch has its full size, and a train step given this spec as its
    signature traces once for every padded length (`training.make_train_step`).
    """
    # No public API builds a per-replica spec; tf.nest cannot rebuild one from its parts (it expects values).
    from tensorflow.python.distribute.values import PerReplicaSpec

    rows = global_batch // strategy.num_replicas_in_sync

    def filled(spec):
        if isinstance(spec, PerReplicaSpec):
            return PerReplicaSpec(*map(filled, tf.nest.flatten(spec, expand_composites=True)))
        if isinstance(spec, tf.TensorSpec) and spec.shape.rank and spec.shape[0] is None:
            return tf.TensorSpec([rows, *spec.shape[1:]], spec.dtype, spec.name)
        return spec

    return tf.nest.map_structure(filled, dataset.element_spec)


def global_batches(pairs, global_batch, seed, unique_ids=True, shuffle_buffer=SHUFFLE_BUFFER, repeat=True):
    """Yields lists of `global_batch` pairs in a seeded order.

    With `unique_ids`, a pair whose query or document id is already in the batch
    waits for a later batch (it is not dropped); what is left at the end of an
    epoch opens the next one.
    """
    waiting = collections.deque()
    epoch = 0
    while True:
        rng = np.random.default_rng([seed, epoch])
        batch, queries, documents = [], set(), set()
        seen = yielded = 0
        for pair in _chain_waiting(waiting, _shuffled(pairs, rng, shuffle_buffer)):
            seen += 1
            if unique_ids and (pair.query_id in queries or pair.document_id in documents):
                waiting.append(pair)
                continue
            batch.append(pair)
            queries.add(pair.query_id)
            documents.add(pair.document_id)
            if len(batch) == global_batch:
                yield batch
                yielded += 1
                batch, queries, documents = [], set(), set()
        if seen == 0:
            raise ValueError("no training pairs")
        if unique_ids and not yielded:
            # A whole pass over the data could not fill one batch with distinct ids.
            raise ValueError(
                f"cannot fill a global batch of {global_batch} pairs with distinct query and document ids: "
                f"the training data has fewer; use a smaller batch or turn unique ids off"
            )
        waiting.extendleft(reversed(batch))  # an unfinished batch opens the next epoch
        epoch += 1
        if not repeat:
            return


def _chain_waiting(waiting, candidates):
    """Pairs that waited come first, each tried once per new candidate."""
    pending = len(waiting)
    while pending:
        pending -= 1
        yield waiting.popleft()
    for pair in candidates:
        if waiting:  # give one waiting pair another chance before each new one
            yield waiting.popleft()
        yield pair


def _shuffled(pairs, rng, shuffle_buffer):
    if isinstance(pairs, Sequence):
        for index in rng.permutation(len(pairs)):
            yield pairs[int(index)]
        return
    buffer = []
    for pair in pairs:
        if len(buffer) < shuffle_buffer:
            buffer.append(pair)
            continue
        index = int(rng.integers(len(buffer)))
        yield buffer[index]
        buffer[index] = pair
    rng.shuffle(buffer)
    yield from buffer


def _row(pair: TrainingPair, hard_negatives, rng):
    row = {
        "query": pair.query.encode("utf-8"),
        "document": pair.document.encode("utf-8"),
        "query_id": pair.query_id.encode("utf-8"),
        "document_id": pair.document_id.encode("utf-8"),
    }
    if hard_negatives:
        available = pair.hard_negatives
        if not available:
            raise ValueError(
                f"hard_negatives={hard_negatives} but the pair of query {pair.query_id!r} has none"
            )
        replace = len(available) < hard_negatives
        chosen = rng.choice(len(available), size=hard_negatives, replace=replace)
        row["hard_negatives"] = np.array([available[int(i)].encode("utf-8") for i in chosen], dtype=object)
        row["hard_negative_ids"] = np.array([pair.hard_negative_id(int(i)).encode("utf-8") for i in chosen],
                                            dtype=object)
    return row
