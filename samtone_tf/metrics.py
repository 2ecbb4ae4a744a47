"""Retrieval metrics over a run {query_id: {doc_id: score}} and qrels {query_id: {doc_id: grade}}.

The definitions are trec_eval's (and pytrec_eval's): a document is relevant when its
grade is >= 1; ties in score are broken by document id in descending order, as
trec_eval does; nDCG uses the grades as gains with a log2(rank + 1) discount.
Averages are over the judged queries that have at least one relevant document; a
query missing from the run scores 0.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("P", "MRR", "nDCG", "Recall", "MAP")


def ranked(scores):
    """Document ids of one query's {doc_id: score}, best first, trec_eval tie order."""
    # Sort by doc id descending, then stably by score descending.
    by_id = sorted(scores, reverse=True)
    return sorted(by_id, key=lambda doc_id: -scores[doc_id])


def precision_at(ranking, relevant, k):
    return sum(1 for doc_id in ranking[:k] if doc_id in relevant) / k


def reciprocal_rank_at(ranking, relevant, k=None):
    for rank, doc_id in enumerate(ranking[:k] if k else ranking, start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


def recall_at(ranking, relevant, k):
    return sum(1 for doc_id in ranking[:k] if doc_id in relevant) / len(relevant)


def ndcg_at(ranking, grades, k):
    gains = [grades.get(doc_id, 0) for doc_id in ranking[:k]]
    dcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1) if g > 0)
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def average_precision(ranking, relevant, k=None):
    hits, total = 0, 0.0
    for rank, doc_id in enumerate(ranking[:k] if k else ranking, start=1):
        if doc_id in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant)


def recall_at_k(found_rows, true_rows):
    """Mean over queries of |found ∩ true| / |true|: an approximate search's rows against exact search's
    ([Q, k] each, or lists of any length per query)."""
    return float(np.mean([len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found_rows, true_rows)]))


def per_query(run, qrels, measures):
    """{query_id: {measure: value}} for measures like "P@1", "MRR@10", "nDCG@10", "Recall@100",
    "MAP" (no cut-off) or "MAP@100"."""
    parsed = [_parse(m) for m in measures]
    results = {}
    for query_id, grades in qrels.items():
        relevant = {doc_id for doc_id, grade in grades.items() if grade >= 1}
        if not relevant:
            continue
        ranking = ranked(run.get(query_id, {}))
        values = {}
        for measure, (name, k) in zip(measures, parsed):
            if name == "P":
                values[measure] = precision_at(ranking, relevant, k)
            elif name == "MRR":
                values[measure] = reciprocal_rank_at(ranking, relevant, k)
            elif name == "Recall":
                values[measure] = recall_at(ranking, relevant, k)
            elif name == "nDCG":
                values[measure] = ndcg_at(ranking, grades, k)
            else:
                values[measure] = average_precision(ranking, relevant, k)
        results[query_id] = values
    return results


def evaluate(run, qrels, measures=("P@1", "MRR@10", "nDCG@10", "Recall@10", "Recall@100")):
    """{measure: mean over judged queries with a relevant document}."""
    table = per_query(run, qrels, measures)
    if not table:
        raise ValueError("no judged query has a relevant document")
    return {m: float(np.mean([values[m] for values in table.values()])) for m in measures}


def paired_randomization_test(differences, rounds=10_000, seed=0):
    """Two-sided p-value that paired per-query differences (system A − system B) average zero.

    `differences` is one array [Q] (the statistic is its mean) or a list of arrays, one per evaluation set
    (the statistic is the mean over sets of each set's mean: the "average" column of a results table). Under
    the null hypothesis each difference's sign is arbitrary, so the statistic is compared with the statistics
    of sign-flipped differences (Fisher's randomisation test, as used for IR evaluation by Smucker et al.,
    CIKM 2007): exactly over all 2^Q flips for Q <= 16, else over `rounds` random flips (seeded), with the
    observed assignment counted: p = (hits + 1) / (rounds + 1).
    """
    groups = [np.asarray(differences, np.float64)] if np.ndim(differences[0]) == 0 else [
        np.asarray(d, np.float64) for d in differences]
    groups = [g for g in groups if g.size]
    if not groups:
        raise ValueError("no differences to test")
    sizes = [g.size for g in groups]
    values = np.concatenate(groups)
    weights = np.concatenate([np.full(n, 1.0 / (n * len(groups))) for n in sizes])  # mean of set means
    observed = abs(float(np.dot(weights, values)))
    tolerance = 1e-12 * max(1.0, observed)
    if values.size <= 16:
        signs = 1 - 2 * ((np.arange(2 ** values.size)[:, None] >> np.arange(values.size)) & 1)
        statistics = np.abs(signs @ (weights * values))
        return float(np.mean(statistics >= observed - tolerance))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, rounds, 1000):
        signs = rng.choice((-1.0, 1.0), size=(min(1000, rounds - start), values.size))
        hits += int(np.sum(np.abs(signs @ (weights * values)) >= observed - tolerance))
    return (hits + 1) / (rounds + 1)


def trec_run_text(run, tag="samtone_tf"):
    """A run {query_id: {doc_id: score}} as a TREC run file ("qid Q0 docid rank score tag" lines, each query's
    documents in trec_eval's order), readable by trec_eval and pytrec_eval."""
    import re

    lines = []
    tag = re.sub(r"\s+", "_", str(tag)) or "samtone_tf"
    for query_id in sorted(run):
        scores = run[query_id]
        spaced = next((i for i in (query_id, *scores) if not str(i) or re.search(r"\s", str(i))), None)
        if spaced is not None:
            raise ValueError(f"id {spaced!r} is empty or holds whitespace, which a TREC run file cannot hold "
                             "(trec_eval splits its lines on whitespace); drop --run_out for this dataset")
        for rank, doc_id in enumerate(ranked(scores), start=1):
            lines.append(f"{query_id} Q0 {doc_id} {rank} {scores[doc_id]:.6f} {tag}")
    return "\n".join(lines) + ("\n" if lines else "")


def _parse(measure):
    name, _, cut = measure.partition("@")
    if name not in METRICS:
        raise ValueError(f"unknown measure {measure!r}: use {', '.join(METRICS)} with @k")
    if name == "MAP" and not cut:
        return name, None
    if not cut.isdigit() or int(cut) < 1:
        raise ValueError(f"measure {measure!r} needs a cut-off, e.g. {name}@10")
    return name, int(cut)
