"""Partitioned (IVF) search in pure TensorFlow ops: for corpora too large to search exactly per query, in a
SavedModel that stock TensorFlow Serving runs (it does not link ScaNN's ops).

The corpus is split into k-means partitions (spherical: the towers' embeddings are unit vectors). A query is
scored against the partitions' centroids, the `probes` nearest partitions are searched exactly, and the top k of
their documents is returned. Storage: the embeddings sorted by partition, [N, D], with the partition boundaries
`offsets` [P + 1], so that each partition is one contiguous block (a slice, not a gather). The search walks the
distinct partitions the batch probes; each is one matrix product with the queries that probe it and a top k per
(query, partition) pair; the pairs' results are then merged into a top k per query. Probing every partition gives
the exact top k.

How many partitions: `index.tuning.tune_partitions` builds √N, 2√N and 4√N partitions (`PARTITION_MULTIPLIERS`),
gives each the fewest probes reaching the recall target (`tune_probes`), times each on the tuning queries, and keeps
the fastest. More, smaller partitions cost more centroid scores and loop steps per query but read less of the
corpus for the same recall; which wins depends on the corpus, the request size and the CPU, so it is measured,
not assumed. Build time is bounded: three k-means runs (each on a sample of at most max(100,000, 30 P) rows) and,
per partitioning, at most 2 log2(P) + 1 searches of the tuning queries to find its probes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from samtone_tf.metrics import recall_at_k

PARTITION_MULTIPLIERS = (1, 2, 4)  # of sqrt(N) partitions: the partitionings tune_partitions builds and times


@dataclass
class Partitions:
    """centroids [P, D] float32; embeddings [N, D] float32 sorted by partition; rows [N] int64, each sorted
    embedding's row in the original corpus; offsets [P + 1] int64, partition p holds sorted rows
    offsets[p]:offsets[p + 1]."""

    centroids: np.ndarray
    embeddings: np.ndarray
    rows: np.ndarray
    offsets: np.ndarray

    @property
    def count(self):
        return len(self.centroids)


def default_partition_count(size):
    """About sqrt(N) partitions (the usual IVF choice: probing cost ~ P + N/P per probe)."""
    return int(min(max(round(size ** 0.5), 1), 16_384))


def spherical_kmeans(embeddings, count, iterations=10, sample_size=100_000, seed=0, block=65_536):
    """`count` unit-norm centroids [P, D] of `embeddings` [N, D] by spherical k-means on a seeded sample of at
    most `sample_size` rows (k-means++-free: seeded with distinct random rows; an emptied centroid is
    re-seeded with a random row)."""
    embeddings = np.asarray(embeddings, np.float32)
    rng = np.random.default_rng(seed)
    if count > len(embeddings):
        raise ValueError(f"{count} partitions for {len(embeddings)} embeddings")
    sample = embeddings[np.sort(rng.choice(len(embeddings), size=min(sample_size, len(embeddings)), replace=False))]
    centroids = sample[rng.choice(len(sample), size=count, replace=False)].copy()
    for _ in range(iterations):
        assignment = assign(sample, centroids, block)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assignment, sample)
        empty = np.bincount(assignment, minlength=count) == 0
        sums[empty] = sample[rng.choice(len(sample), size=int(empty.sum()), replace=False)]
        centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return centroids.astype(np.float32)


def assign(embeddings, centroids, block=65_536):
    """The nearest centroid (by dot product) of each row [N] int64, computed in blocks of rows."""
    centroid_tensor = tf.constant(centroids, tf.float32)
    parts = [tf.argmax(tf.matmul(tf.constant(embeddings[start : start + block], tf.float32), centroid_tensor,
                                 transpose_b=True), axis=1).numpy()
             for start in range(0, len(embeddings), block)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def partition_counts(size, multipliers=PARTITION_MULTIPLIERS):
    """The partition counts `tune_partitions` tries for `size` documents: `default_partition_count(size)` times
    each multiplier, at most size // 4 (partitions of a few documents only add loop steps), distinct, ascending."""
    base = default_partition_count(size)
    return sorted({int(min(max(round(base * m), 1), max(size // 4, 1))) for m in multipliers})


def build_partitions(embeddings, count=None, iterations=10, sample_size=None, seed=0):
    """k-means partitions of `embeddings` [N, D] (default count: `default_partition_count(N)`; k-means sample:
    max(100,000, 30 per partition) rows by default)."""
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or not len(embeddings):
        raise ValueError(f"embeddings must be a non-empty [N, D] array; got shape {embeddings.shape}")
    count = count or default_partition_count(len(embeddings))
    sample_size = sample_size or max(100_000, 30 * count)
    centroids = spherical_kmeans(embeddings, count, iterations, sample_size, seed)
    assignment = assign(embeddings, centroids)
    order = np.argsort(assignment, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(assignment, minlength=count))]).astype(np.int64)
    return Partitions(centroids, embeddings[order], order.astype(np.int64), offsets)


def partitioned_top_k(queries, centroids, embeddings, offsets, probes, k):
    """Top k by dot product among the documents of each query's `probes` nearest partitions.

    queries [Q, D]; centroids [P, D]; embeddings [N, D] sorted by partition; offsets int64 [P + 1];
    probes, k: int32 scalars. -> (scores float32 [Q, k], positions int64 [Q, k] into the sorted embeddings;
    -1 with score -inf where the probed partitions hold fewer than k documents). TensorFlow ops only.
    """
    queries = tf.convert_to_tensor(queries, tf.float32)
    embeddings = tf.convert_to_tensor(embeddings, tf.float32)
    offsets = tf.convert_to_tensor(offsets, tf.int64)
    k = tf.convert_to_tensor(k, tf.int32)
    count = tf.shape(queries)[0]
    probes = tf.minimum(tf.convert_to_tensor(probes, tf.int32), tf.shape(centroids)[0])
    probed = tf.math.top_k(tf.matmul(queries, centroids, transpose_b=True), k=probes).indices  # [Q, n]
    pairs = tf.reshape(probed, [-1])  # pair j: query j // n probes partition pairs[j]
    by_partition = tf.argsort(pairs, stable=True)
    pair_queries = tf.gather(queries, by_partition // probes)  # [Q n, D], grouped by partition
    partitions, _, group_sizes = tf.unique_with_counts(tf.gather(pairs, by_partition))
    group_ends = tf.cast(tf.cumsum(group_sizes), tf.int64)
    bounds = tf.stack([group_ends - tf.cast(group_sizes, tf.int64), group_ends,
                       tf.gather(offsets, partitions), tf.gather(offsets, partitions + 1)], axis=1)  # [U, 4]

    # No iteration reads another's results (each writes its own slot), so the loop runs them side by side.
    def search_partition(i, scores_found, positions_found):
        first, last, start, end = tf.unstack(bounds[i])
        scores = tf.matmul(pair_queries[first:last], embeddings[start:end], transpose_b=True)  # [G, S], no copy
        # k columns of -inf: a partition smaller than k still gives k results, the missing ones empty.
        top = tf.math.top_k(tf.pad(scores, [[0, 0], [0, k]], constant_values=float("-inf")), k=k)
        positions = tf.cast(top.indices, tf.int64) + start
        positions = tf.where(positions < end, positions, tf.constant(-1, tf.int64))
        return i + 1, scores_found.write(i, top.values), positions_found.write(i, positions)

    unique_count = tf.shape(partitions)[0]
    found = [tf.TensorArray(dtype, size=unique_count, infer_shape=False, element_shape=tf.TensorShape([None, None]))
             for dtype in (tf.float32, tf.int64)]
    _, scores_found, positions_found = tf.while_loop(
        lambda i, *_: i < unique_count, search_partition, [tf.constant(0), *found])
    # Back to pair order: row q holds the k best of each of its n probes.
    to_pairs = tf.math.invert_permutation(by_partition)
    shape = tf.stack([count, probes * k])
    pair_scores = tf.reshape(tf.gather(_concat(scores_found, k), to_pairs), shape)
    pair_positions = tf.reshape(tf.gather(_concat(positions_found, k), to_pairs), shape)
    best = tf.math.top_k(pair_scores, k=k)
    return best.values, tf.gather(pair_positions, best.indices, batch_dims=1)


def _concat(found, k):
    """The rows of TensorArray `found`, [R, k]; an empty batch (no element: TensorFlow cannot concatenate
    elements of unknown shape) gives [0, k]."""
    return tf.cond(found.size() > 0, found.concat, lambda: tf.zeros(tf.stack([0, k]), found.dtype))


# One traced search shared by every PartitionedIndex: tuning makes several, and a tf.function per index would be
# retraced for each (and TensorFlow warns of the retracing).
_traced_search = tf.function(partitioned_top_k, reduce_retracing=True)


class PartitionedIndex:
    """`Partitions` searched in NumPy-in/NumPy-out form, with the same answer as the retriever SavedModel.
    -> search(query_embeddings [Q, D], k, probes) = (doc_ids object [Q, k], scores float32 [Q, k])."""

    def __init__(self, partitions, doc_ids, probes):
        self.partitions = partitions
        self.doc_ids = np.asarray(doc_ids, dtype=object)
        self.probes = int(probes)
        self._centroids = tf.constant(partitions.centroids)
        self._embeddings = tf.constant(partitions.embeddings)
        self._offsets = tf.constant(partitions.offsets)
        self._search = _traced_search

    def __len__(self):
        return len(self.doc_ids)

    def search(self, query_embeddings, k=10, probes=None, batch=1024):
        queries = np.asarray(query_embeddings, np.float32)
        k = min(int(k), len(self))
        all_ids, all_scores = [], []
        for start in range(0, len(queries), batch):
            scores, positions = self._search(queries[start : start + batch], self._centroids, self._embeddings,
                                             self._offsets, tf.constant(int(probes or self.probes)), tf.constant(k))
            positions = positions.numpy()
            rows = self.partitions.rows[np.maximum(positions, 0)]
            ids = self.doc_ids[rows]
            ids[positions < 0] = ""
            all_ids.append(ids)
            all_scores.append(scores.numpy())
        if not all_ids:
            return np.zeros((0, k), object), np.zeros((0, k), np.float32)
        return np.concatenate(all_ids), np.concatenate(all_scores)


def row_index(partitions, probes=1):
    """A PartitionedIndex of `partitions` whose document ids are the corpus rows (what tuning compares)."""
    return PartitionedIndex(partitions, np.arange(len(partitions.rows)), probes)


def probes_holding_k(partitions, k):
    """The fewest probes that hold at least k documents whichever partitions are probed (the smallest ones
    summed): with at least this many, every query gets k results, never an empty slot."""
    sizes = np.sort(np.diff(partitions.offsets))
    return int(min(np.searchsorted(np.cumsum(sizes), k) + 1, partitions.count))


def excluded_rows_and_extra(excluded_rows, count):
    """`excluded_rows` [Q] (per query, a corpus row not to count, -1 for none; None: no query has one) as an
    int64 array of `count` rows, and how many candidates beyond k a search must fetch so that k remain once each
    query's excluded row is dropped (1 if any query has one, else 0)."""
    excluded = np.full(count, -1, np.int64) if excluded_rows is None else np.asarray(excluded_rows, np.int64)
    return excluded, int((excluded >= 0).any())


def tune_probes(partitions, queries, true_rows, target_recall, k=10, excluded_rows=None, index=None):
    """The fewest probes whose recall@k against `true_rows` [Q, k] (corpus rows) reaches `target_recall`, by
    doubling then bisecting, and never fewer than `probes_holding_k`. `index`: a PartitionedIndex of `partitions`
    whose ids are the corpus rows, to search with (default: one is built; it holds a copy of the corpus).
    -> (probes, recall measured with them)."""
    index = index or row_index(partitions)
    excluded, extra = excluded_rows_and_extra(excluded_rows, len(queries))

    def recall(probes):
        found, _ = index.search(queries, k + extra, probes=probes)
        kept = [[int(r) for r in candidates if r != "" and int(r) != skip][:k]
                for candidates, skip in zip(found, excluded)]
        return recall_at_k(kept, [[int(t) for t in truth] for truth in true_rows])

    low, high = 0, 1
    measured = {}
    while high < partitions.count:
        measured[high] = recall(high)
        if measured[high] >= target_recall:
            break
        low, high = high, min(high * 2, partitions.count)
    else:
        measured[high] = recall(high)
    while high - low > 1:  # recall(low) < target <= recall(high)
        middle = (low + high) // 2
        measured[middle] = recall(middle)
        if measured[middle] >= target_recall:
            high = middle
        else:
            low = middle
    floor = probes_holding_k(partitions, k + extra)
    if high < floor:
        high = floor
        measured[high] = recall(high)
    return high, measured[high]
