"""Hard-negative mining with our own encoder and index (as sentence-transformers' `mine_hard_negatives` and
FlagEmbedding's `hn_mine` do for theirs): each query's most similar documents that are not its positives,
chosen by rank range, margin against the positives, a score ceiling, and top or seeded random sampling.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from samtone_tf.index.search import ExactIndex

MARGIN_KINDS = ("absolute", "relative")
SAMPLINGS = ("top", "random")


@dataclasses.dataclass(frozen=True)
class MiningOptions:
    """What `mine_hard_negatives` keeps. Ranks count the candidates once positives (by document id) and
    documents whose text equals the query's or a positive's are removed: rank 0 is the most similar
    remaining document.

    num_negatives: negatives per query.
    range_min, range_max: draw from candidate ranks [range_min, range_max).
    margin, margin_kind: the false-negative guard; drop a candidate whose score is within the margin of, or
      above, the lowest positive's score: absolute, score > positive - margin; relative,
      score > positive * (1 - margin). None: no margin.
    max_score: drop candidates scoring above this. None: no ceiling.
    sampling: "top" keeps the most similar candidates left; "random" samples them (seeded per query).
    min_negatives: queries left with fewer candidates than this are dropped (and reported); those with at
      least this many but fewer than num_negatives are kept with fewer (never padded).
    """

    num_negatives: int = 3
    range_min: int = 0
    range_max: int = 100
    margin: float | None = None
    margin_kind: str = "absolute"
    max_score: float | None = None
    sampling: str = "top"
    seed: int = 0
    min_negatives: int = 1

    def __post_init__(self):
        problems = []
        if self.num_negatives < 1:
            problems.append(f"num_negatives must be at least 1; got {self.num_negatives}")
        if not 0 <= self.range_min < self.range_max:
            problems.append(f"need 0 <= range_min < range_max; got {self.range_min}, {self.range_max}")
        if self.margin_kind not in MARGIN_KINDS:
            problems.append(f"margin_kind must be one of {MARGIN_KINDS}; got {self.margin_kind!r}")
        if self.sampling not in SAMPLINGS:
            problems.append(f"sampling must be one of {SAMPLINGS}; got {self.sampling!r}")
        if not 0 <= self.min_negatives <= self.num_negatives:
            problems.append(f"min_negatives must be between 0 and num_negatives; got {self.min_negatives}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclasses.dataclass
class MinedQuery:
    query_id: str
    query: str
    positive_ids: list
    positive_scores: list
    negative_ids: list
    negative_scores: list
    negative_ranks: list


def select_negatives(candidate_ids, candidate_scores, lowest_positive_score, options, rng):
    """The negatives of one query from its candidates (already free of positives), best first.

    -> (ids, scores, ranks) lists.
    """
    chosen = []
    for rank in range(options.range_min, min(options.range_max, len(candidate_ids))):
        score = float(candidate_scores[rank])
        if options.max_score is not None and score > options.max_score:
            continue
        if options.margin is not None:
            if options.margin_kind == "absolute":
                too_close = score > lowest_positive_score - options.margin
            else:
                too_close = score > lowest_positive_score * (1.0 - options.margin)
            if too_close:
                continue
        chosen.append((candidate_ids[rank], score, rank))
    if options.sampling == "random" and len(chosen) > options.num_negatives:
        picks = sorted(rng.choice(len(chosen), size=options.num_negatives, replace=False))
        chosen = [chosen[i] for i in picks]
    chosen = chosen[: options.num_negatives]
    return [c[0] for c in chosen], [c[1] for c in chosen], [c[2] for c in chosen]


def mine_hard_negatives(encoder, data, options=MiningOptions(), corpus=None, index_factory=ExactIndex,
                        batch_size=64, verbose=True):
    """Mines negatives for every query of `data` (RetrievalData) that has a positive (grade > 0).

    `encoder` has encode_queries/encode_documents (a DualEncoder or an export); `corpus` ({doc_id: (title,
    text)}) replaces data.corpus as the pool to mine from. -> (kept: [MinedQuery], dropped: [MinedQuery]),
    dropped holding the queries left with fewer than options.min_negatives candidates.
    """
    pool = _pool(data, corpus)
    doc_ids = list(pool.corpus)
    texts = {d: pool.document_text(d) for d in doc_ids}
    query_ids = [q for q in data.queries if any(g > 0 for g in data.qrels.get(q, {}).values())]
    documents = encoder.encode_documents([texts[d] for d in doc_ids], batch_size=batch_size, verbose=verbose)
    queries = encoder.encode_queries([data.queries[q] for q in query_ids], batch_size=batch_size, verbose=verbose)
    row_of = {d: i for i, d in enumerate(doc_ids)}
    positives = {q: [d for d, g in data.qrels[q].items() if g > 0] for q in query_ids}
    # Positives outside the pool (mining another corpus) are encoded once, for their scores.
    outside = sorted({d for ids in positives.values() for d in ids if d not in row_of})
    outside_rows = {d: i for i, d in enumerate(outside)}
    outside_embeddings = encoder.encode_documents([data.document_text(d) for d in outside], batch_size=batch_size,
                                                  verbose=False) if outside else None
    # Every positive and every text duplicate of one can take a slot above the range: search past them.
    depth = min(len(doc_ids), options.range_max + max(len(p) for p in positives.values()) + 16)
    found_ids, found_scores = index_factory(documents, doc_ids).search(queries, depth)
    kept, dropped = [], []
    for i, query_id in enumerate(query_ids):
        query_text = data.queries[query_id].strip()
        positive_ids = positives[query_id]
        positive_texts = {texts[d] if d in texts else data.document_text(d) for d in positive_ids}
        positive_scores = [float(np.dot(queries[i], documents[row_of[d]])) if d in row_of
                           else float(np.dot(queries[i], outside_embeddings[outside_rows[d]])) for d in positive_ids]
        excluded = set(positive_ids)
        candidates = [(d, s) for d, s in zip(found_ids[i], found_scores[i])
                      if d not in excluded and texts[d] != query_text and texts[d] not in positive_texts]
        rng = np.random.default_rng([options.seed, i])
        ids, scores, ranks = select_negatives([c[0] for c in candidates], [c[1] for c in candidates],
                                              min(positive_scores), options, rng)
        mined = MinedQuery(query_id, data.queries[query_id], positive_ids, positive_scores, ids, scores, ranks)
        (kept if len(ids) >= options.min_negatives else dropped).append(mined)
    return kept, dropped


def _pool(data, corpus):
    """`data` with the corpus to mine from (its own, or `corpus`): document texts as `data` joins them."""
    return data if corpus is None else dataclasses.replace(data, corpus=corpus)


def summarize(kept, dropped, options):
    """The numbers a user checks before training on mined negatives."""
    negatives = [n for m in kept for n in m.negative_scores]
    ranks = [r for m in kept for r in m.negative_ranks]
    positive_scores = [min(m.positive_scores) for m in kept]
    gaps = [min(m.positive_scores) - s for m in kept for s in m.negative_scores]
    return {
        "queries": len(kept) + len(dropped),
        "kept": len(kept),
        "dropped_fewer_than_min_negatives": len(dropped),
        "with_fewer_than_num_negatives": sum(1 for m in kept if len(m.negative_ids) < options.num_negatives),
        "negatives": len(negatives),
        "mean_negative_rank": float(np.mean(ranks)) if ranks else None,
        "mean_negative_score": float(np.mean(negatives)) if negatives else None,
        "mean_lowest_positive_score": float(np.mean(positive_scores)) if positive_scores else None,
        "mean_positive_minus_negative_score": float(np.mean(gaps)) if gaps else None,
        "options": dataclasses.asdict(options),
    }


def flagembedding_record(mined, data, corpus=None):
    """One JSONL record: FlagEmbedding's query/pos/neg plus ids and scores."""
    pool = _pool(data, corpus)

    def text(doc_id):
        return (pool if doc_id in pool.corpus else data).document_text(doc_id)

    return {
        "query": mined.query, "pos": [text(d) for d in mined.positive_ids], "neg": [text(d) for d in mined.negative_ids],
        "query_id": mined.query_id, "pos_ids": mined.positive_ids, "neg_ids": mined.negative_ids,
        "pos_scores": [round(s, 6) for s in mined.positive_scores],
        "neg_scores": [round(s, 6) for s in mined.negative_scores], "neg_ranks": mined.negative_ranks,
    }
