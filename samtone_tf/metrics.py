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


def _parse(measure):
    name, _, cut = measure.partition("@")
    if name not in METRICS:
        raise ValueError(f"unknown measure {measure!r}: use {', '.join(METRICS)} with @k")
    if name == "MAP" and not cut:
        return name, None
    if not cut.isdigit() or int(cut) < 1:
        raise ValueError(f"measure {measure!r} needs a cut-off, e.g. {name}@10")
    return name, int(cut)
