"""ScaNN indexes built to a recall target: the fastest configuration that reaches recall@k >= R on held-out
queries, measured against exact search on this machine.

ScaNN's speed and recall depend on the corpus and on the CPU (the exact search it is compared with is itself
5x faster with AVX-512 than with AVX2), so a default cannot serve every user. `tune_scann` builds a few trees
(sqrt(N), 2 sqrt(N) and 4 sqrt(N) leaves), and for each searches a grid of leaves searched x re-ordering depth,
measuring recall@k against exact search and queries/s; the fastest configuration reaching the target wins.
Recall is then measured again on queries the tuning did not see, and both figures go into the index manifest.

Build time is bounded: at most `max_builds` trees (each a k-means of ScaNN's 12 iterations over at most
`scann_training_sample` rows: 100 per leaf, at least 100,000), and the search grid is
walked from the cheapest setting upwards, stopping for each tree and depth at the first setting that reaches
the target, so at most `len(LEAF_FRACTIONS) x len(REORDER_DEPTHS)` searches of the tuning queries per tree.

`tune_partitions` does the same for the partitioned TF retriever (`samtone_tf.index.partitioned`): a few partition
counts, each with its fewest probes reaching the target, the fastest kept.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from samtone_tf.index.partitioned import (build_partitions, excluded_rows_and_extra, partition_counts, row_index,
                                          tune_probes)
from samtone_tf.index.search import (ExactIndex, SCANN_BRUTE_FORCE_BELOW, ScannIndex, scann_defaults,
                                     scann_training_sample)
from samtone_tf.metrics import recall_at_k

# Of the tree's leaves, searched per query: steps of about sqrt(2) (doubling skipped the fastest setting at 1M,
# between 10 and 20 of 1,000 leaves), down to 0.2% for trees of 4 sqrt(N) leaves.
LEAF_FRACTIONS = (0.002, 0.003, 0.004, 0.005, 0.007, 0.01, 0.014, 0.02, 0.028, 0.04, 0.056, 0.08, 0.16, 0.32, 0.64)
REORDER_DEPTHS = (50, 100, 250, 500)  # candidates re-scored exactly (never fewer than k)
LEAF_MULTIPLIERS = (1.0, 2.0, 4.0)  # trees of sqrt(N) x these leaves, in this order, up to max_builds


def tuning_queries(query_embeddings, document_embeddings, size=2000, seed=0):
    """The queries to tune on: the real ones when there are any (at most `size`), otherwise a seeded sample of
    documents standing in for queries, each excluded from its own results.
    -> (queries [Q, D] float32, excluded_rows [Q] int64: the corpus row to leave out, -1 for none)."""
    rng = np.random.default_rng(seed)
    if query_embeddings is not None and len(query_embeddings):
        queries = np.asarray(query_embeddings, np.float32)
        chosen = np.sort(rng.choice(len(queries), size=min(size, len(queries)), replace=False))
        return queries[chosen], np.full(len(chosen), -1, np.int64)
    documents = np.asarray(document_embeddings, np.float32)
    chosen = np.sort(rng.choice(len(documents), size=min(size, len(documents)), replace=False))
    return documents[chosen], chosen.astype(np.int64)


def tune_scann(embeddings, doc_ids, queries, target_recall, k=10, excluded_rows=None, max_builds=3,
               held_out_fraction=0.5, seed=0, say=print):
    """The fastest ScaNN index over `embeddings` [N, D] reaching recall@k >= `target_recall` on `queries` [Q, D].

    Half the queries (`held_out_fraction`) are held out: the configuration is chosen on the others, and the
    recall reported (`index.settings["tuning"]["held_out_recall"]`) is measured on the held-out half.
    `excluded_rows` [Q] names, per query, a corpus row not to count (a document standing in for a query is
    its own nearest neighbour), -1 for none. Corpora below the brute-force size are searched exactly by ScaNN
    (recall 1). When no configuration reaches the target, the one with the highest recall is kept and the
    manifest says so (`reached: false`). -> ScannIndex whose settings hold the choice and the measurements.
    """
    return tune_scann_for_targets(embeddings, doc_ids, queries, [target_recall], k, excluded_rows, max_builds,
                                  held_out_fraction, seed, say)[0]


def held_out_split(count, fraction=0.5, seed=0):
    """(tuning rows, held-out rows) of `count` queries: a seeded permutation, the held-out part first (at least
    one row). The tuned index is chosen on the first and its recall reported on the second."""
    order = np.random.default_rng(seed).permutation(count)
    held = order[: max(1, int(round(count * fraction)))]
    return order[len(held):], held


def tune_scann_for_targets(embeddings, doc_ids, queries, targets, k=10, excluded_rows=None, max_builds=3,
                           held_out_fraction=0.5, seed=0, say=print):
    """`tune_scann` for several recall targets at the cost of one: the trees are built once and the grid walked
    up to the highest target, which passes every cheaper setting on the way. -> [ScannIndex], one per target in
    `targets`' order (indexes chosen from the same tree share its searcher, each with its own settings)."""
    embeddings = np.asarray(embeddings, np.float32)
    queries = np.asarray(queries, np.float32)
    targets = [float(t) for t in targets]
    if not targets or not all(0.0 < t <= 1.0 for t in targets):
        raise ValueError(f"target_recall must be in (0, 1]; got {targets[0] if len(targets) == 1 else targets}")
    if len(queries) < 2:
        raise ValueError(f"tuning needs at least 2 queries; got {len(queries)}")
    excluded_rows, extra = excluded_rows_and_extra(excluded_rows, len(queries))
    k = min(int(k), len(embeddings) - extra)
    tune, held = held_out_split(len(queries), held_out_fraction, seed)
    row_ids = np.arange(len(embeddings))
    truth = exact_rows(embeddings, row_ids, queries, k, excluded_rows)

    size, dimension = embeddings.shape
    if size < SCANN_BRUTE_FORCE_BELOW:
        index = ScannIndex(embeddings, doc_ids, k=k)
        found = _scann_rows(index, queries, k, excluded_rows, None, None)
        chosen = []
        for target in targets:
            copy = _with_settings(index, dict(index.settings), doc_ids)
            copy.settings["tuning"] = dict(target_recall=target, k=k, reached=True,
                                           tuning_recall=recall_at_k(found[tune], truth[tune]),
                                           held_out_recall=recall_at_k(found[held], truth[held]),
                                           queries=len(tune), held_out_queries=len(held), tried=[])
            chosen.append(copy)
        return chosen

    defaults = scann_defaults(size, dimension)
    leaf_counts = []
    for multiplier in LEAF_MULTIPLIERS:
        leaves = int(min(max(round(defaults["num_leaves"] * multiplier), 16), size // 10))
        if leaves not in leaf_counts:
            leaf_counts.append(leaves)
    highest = max(targets)
    tried, best, best_index = [], {t: None for t in targets}, {t: None for t in targets}
    for leaves in leaf_counts[:max_builds]:
        settings = dict(num_leaves=leaves, training_sample_size=scann_training_sample(size, leaves))
        start = time.perf_counter()
        index = ScannIndex(embeddings, row_ids, k=k, settings=settings)
        build_seconds = time.perf_counter() - start
        for depth in sorted({max(d, k) for d in REORDER_DEPTHS}):
            for searched in sorted({max(1, int(round(leaves * fraction))) for fraction in LEAF_FRACTIONS}):
                found, qps = _timed(lambda: _scann_rows(index, queries[tune], k, excluded_rows[tune], searched,
                                                        depth))
                trial = dict(num_leaves=leaves, num_leaves_to_search=searched, reorder=depth,
                             recall=recall_at_k(found, truth[tune]), queries_per_second=qps,
                             build_seconds=build_seconds)
                tried.append(trial)
                for target in targets:
                    if _better(trial, best[target], target):
                        best[target], best_index[target] = trial, index
                if trial["recall"] >= highest:
                    break  # more leaves only cost time at this depth
        top = best[highest]
        say(f"tuning: {leaves} leaves: best so far {top['num_leaves_to_search']}/{top['num_leaves']} leaves, "
            f"reorder {top['reorder']}: recall@{k} {top['recall']:.3f} at {top['queries_per_second']:.0f} q/s")

    chosen = []
    for target in targets:
        trial = best[target]
        index = _with_settings(best_index[target], dict(best_index[target].settings,
                                                        num_leaves_to_search=trial["num_leaves_to_search"],
                                                        reorder=trial["reorder"]), doc_ids)
        held_found = _scann_rows(index, queries[held], k, excluded_rows[held], None, None)
        index.settings["tuning"] = dict(
            target_recall=target, k=k, reached=trial["recall"] >= target,
            tuning_recall=trial["recall"], held_out_recall=recall_at_k(held_found, truth[held]),
            queries_per_second=trial["queries_per_second"], queries=len(tune), held_out_queries=len(held),
            builds=len(leaf_counts[:max_builds]), tried=tried)
        chosen.append(index)
    return chosen


def tune_partitions(embeddings, queries, true_rows, target_recall, k=10, excluded_rows=None, counts=None,
                    request=64, say=print):
    """The fastest partitioning of `embeddings` [N, D] reaching recall@k >= `target_recall` on `queries` [Q, D]
    against `true_rows` [Q, k] (corpus rows; `excluded_rows` [Q] as in `tune_probes`).

    For each count of `counts` (default `partitioned.partition_counts(N)`): k-means partitions, the fewest probes
    reaching the target (`partitioned.tune_probes`), and the queries/s of searching the queries in requests of
    `request`. The fastest wins (every partitioning reaches the target: probing all of it is the exact search).
    -> (Partitions, probes, recall on `queries`, report: what the manifest records, with every partitioning tried).
    """
    embeddings = np.asarray(embeddings, np.float32)
    queries = np.asarray(queries, np.float32)
    excluded, extra = excluded_rows_and_extra(excluded_rows, len(queries))
    tried, best, best_partitions = [], None, None
    for count in counts or partition_counts(len(embeddings)):
        start = time.perf_counter()
        partitions = build_partitions(embeddings, count)
        build_seconds = time.perf_counter() - start
        index = row_index(partitions)  # one copy of the corpus for both tuning the probes and timing them
        probes, recall = tune_probes(partitions, queries, true_rows, target_recall, k, excluded, index=index)
        index.search(queries[:request], k + extra, probes=probes)  # traced and warm before timing
        _, qps = _timed(lambda: index.search(queries, k + extra, probes=probes, batch=request)[0])
        trial = dict(partitions=partitions.count, probes=probes, recall=recall, queries_per_second=qps,
                     build_seconds=build_seconds)
        tried.append(trial)
        say(f"partitioned: {count} partitions, {probes} probes: recall@{k} {recall:.3f} at {qps:.0f} q/s "
            f"(requests of {request})")
        if _better(trial, best, target_recall):
            best, best_partitions = trial, partitions
        partitions = index = None  # a losing partitioning's copy of the corpus is freed before the next
    report = dict(best, target_recall=float(target_recall), k=int(k), tuning_queries=len(queries),
                  request_queries=int(request), tried=tried)
    return best_partitions, best["probes"], best["recall"], report


def _with_settings(index, settings, doc_ids):
    """A ScannIndex sharing `index`'s searcher, with its own settings and document ids."""
    out = copy.copy(index)
    out.settings = settings
    out.doc_ids = np.asarray(doc_ids, dtype=object)
    return out


def _better(trial, best, target):
    """Reaching the target beats not reaching it; among those reaching it, faster wins; among those
    not reaching it, higher recall wins."""
    if best is None:
        return True
    reached, best_reached = trial["recall"] >= target, best["recall"] >= target
    if reached != best_reached:
        return reached
    if reached:
        return trial["queries_per_second"] > best["queries_per_second"]
    return trial["recall"] > best["recall"]


def _timed(search, repeats=2):
    """(result, queries/s): the best of `repeats` runs (the first may pay for warming caches)."""
    best_seconds, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = search()
        best_seconds = min(best_seconds, time.perf_counter() - start)
    return result, len(result) / best_seconds


def _drop_excluded(rows, excluded_rows, k):
    """Row lists of k+1 candidates -> [Q, k] without each query's excluded row."""
    out = np.empty((len(rows), k), np.int64)
    for i, (candidates, excluded) in enumerate(zip(rows, excluded_rows)):
        kept = [int(r) for r in candidates if r != excluded][:k]
        out[i] = kept + [-1] * (k - len(kept))  # fewer candidates than k: -1 never matches a true row
    return out


def exact_rows(embeddings, row_ids, queries, k, excluded_rows):
    """The exact top-k corpus rows [Q, k] of each query, leaving out its excluded row (-1: none)."""
    found, _ = ExactIndex(embeddings, row_ids).search(queries, k + 1)
    return _drop_excluded(found.astype(np.int64), excluded_rows, k)


def _scann_rows(index, queries, k, excluded_rows, leaves_to_search, reorder):
    """Corpus rows ScaNN finds (the index's doc ids must be its rows while tuning)."""
    found, _ = index.search(queries, k + 1, leaves_to_search=leaves_to_search, reorder=reorder, ids=False)
    return _drop_excluded(found, excluded_rows, k)
