"""Evaluate an encoder on a retrieval set: encode queries and corpus, search, score.

The encoder is anything with `encode_queries(texts)` and `encode_documents(texts)`
returning [N, D] arrays: a `DualEncoder`, or an exported model loaded back.
"""

from __future__ import annotations

import time

from samtone_tf import metrics
from samtone_tf.index.search import ExactIndex
from samtone_tf.model.fingerprint import encoder_document_fingerprint
from samtone_tf.provenance import corpus_fingerprint, short

DEFAULT_MEASURES = ("P@1", "MRR@10", "nDCG@10", "Recall@10", "Recall@100")


def run_retrieval(encoder, data, k=100, batch_size=64, verbose=True, index_factory=ExactIndex,
                  ignore_identical_ids=False, index=None):
    """{query_id: {doc_id: score}}: the top k documents of every query of `data`. With a prebuilt `index` (of
    the same encoder's document embeddings of `data`'s corpus) the corpus is not encoded again."""
    query_ids = list(data.queries)
    queries = encoder.encode_queries([data.queries[q] for q in query_ids], batch_size=batch_size,
                                     verbose=verbose)
    if index is None:
        doc_ids = list(data.corpus)
        documents = encoder.encode_documents([data.document_text(d) for d in doc_ids], batch_size=batch_size,
                                             verbose=verbose)
        index = index_factory(documents, doc_ids)
    extra = 1 if ignore_identical_ids else 0
    found_ids, found_scores = index.search(queries, k + extra)
    run = {}
    for query_id, ids, scores in zip(query_ids, found_ids, found_scores):
        ranked = [(d, float(s)) for d, s in zip(ids, scores) if not (ignore_identical_ids and d == query_id)]
        run[query_id] = dict(ranked[:k])
    return run


def evaluate_encoder(encoder, data, measures=DEFAULT_MEASURES, k=100, batch_size=64, verbose=True,
                     index_factory=ExactIndex, ignore_identical_ids=False, keep_run=False, index=None):
    """{measure: value} of `encoder` on `data`, plus the query and document counts and seconds taken; with
    `keep_run`, also "run" ({query_id: {doc_id: score}}, the ranking scored) and "per_query"
    ({query_id: {measure: value}})."""
    start = time.perf_counter()
    run = run_retrieval(encoder, data, k=max(k, _largest_cutoff(measures)), batch_size=batch_size,
                        verbose=verbose, index_factory=index_factory, ignore_identical_ids=ignore_identical_ids,
                        index=index)
    table = metrics.per_query(run, data.qrels, measures)
    if not table:
        raise ValueError(f"{data.name}: no judged query has a relevant document")
    result = {m: float(sum(values[m] for values in table.values()) / len(table)) for m in measures}
    result.update(queries=len(data.queries), documents=len(data.corpus),
                  seconds=round(time.perf_counter() - start, 2))
    if keep_run:
        result.update(run=run, per_query=table)
    return result


def _largest_cutoff(measures):
    cuts = [int(m.partition("@")[2]) for m in measures if m.partition("@")[2].isdigit()]
    return max(cuts, default=1)


SAME_EMBEDDING_TOLERANCE = 1e-5


def index_provenance(index_dir):
    """What an index's manifest records of the tower and corpus it embeds ({} for an index of an earlier version)."""
    import json
    from pathlib import Path

    try:
        manifest = json.loads((Path(index_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    provenance = manifest.get("provenance") if isinstance(manifest, dict) else None
    return provenance if isinstance(provenance, dict) else {}


def check_prebuilt_index(index, data, encoder, index_dir, samples=16):
    """A prebuilt index must hold this encoder's embeddings of documents of `data`'s corpus: its ids must be
    corpus ids; the fingerprints its manifest records must be this encoder's document tower's and those of the
    corpus's texts of its ids (`samtone_tf.provenance`); and, a second guard (the only one for an index of an
    earlier version), a sample of its documents encoded now must equal their stored embeddings (an exact index) or
    find themselves in it at their own score (ScaNN) (ids alone cannot tell two corpora numbered 1..N apart, nor
    two models). Corpus documents it lacks (dead letters of
    the encoding run, such as empty documents) are reported, since they can never be retrieved."""
    import numpy as np

    corpus = data.corpus
    foreign = [doc_id for doc_id in index.doc_ids if doc_id not in corpus]
    if foreign:
        raise ValueError(f"{index_dir}: {len(foreign)} of its {len(index.doc_ids)} documents are not in the corpus of "
                         f"{data.name} (e.g. {foreign[0]!r}): it indexes another corpus")
    recorded = index_provenance(index_dir)
    if recorded.get("document_tower"):
        model = encoder_document_fingerprint(encoder)
        if model != recorded["document_tower"]:
            raise ValueError(f"{index_dir}: its embeddings were made by the document tower "
                             f"{short(recorded['document_tower'])}, not this model's {short(model)} (fingerprints of "
                             "weights and vocabulary): re-encode the corpus with this model")
    if recorded.get("corpus"):
        documents = corpus_fingerprint((d, data.document_text(d)) for d in index.doc_ids)
        if documents != recorded["corpus"]:
            raise ValueError(f"{index_dir}: it embeds documents {short(recorded['corpus'])}, but {data.name}'s texts "
                             f"of its ids are {short(documents)}: another corpus (or another version of it) with the "
                             "same ids")
    if getattr(index, "precision", None) is not None:
        # Codes (index.quantized) score a document against itself by its codes, not its embedding: no sample can
        # find itself at its own score. Such an index is of this version, so its fingerprints were compared above.
        if not (recorded.get("document_tower") and recorded.get("corpus")):
            raise ValueError(f"{index_dir}: a codes index that records no fingerprints of its tower and corpus")
        return
    rows = np.unique(np.linspace(0, len(index.doc_ids) - 1, min(samples, len(index.doc_ids))).astype(int))
    sample = [index.doc_ids[row] for row in rows]
    vectors = encoder.encode_documents([data.document_text(d) for d in sample], verbose=False)
    stored = getattr(index, "embeddings", None)
    if stored is not None:
        # The second guard, tight enough to tell two checkpoints of one run apart (cosine 0.99995 differs by 5e-5):
        # the stored vectors themselves, against the same texts encoded now (batching moves them by ~1e-6).
        difference = float(np.max(np.abs(np.asarray(stored[rows], np.float64) - vectors)))
        matched = len(sample) if difference <= SAME_EMBEDDING_TOLERANCE else 0
    else:
        found_ids, found_scores = index.search(vectors, 10)
        own = np.sum(np.asarray(vectors, np.float64) ** 2, axis=1)
        matched = 0
        for doc_id, ids, scores, score in zip(sample, found_ids, found_scores, own):
            ids = list(ids)
            matched += doc_id in ids and abs(scores[ids.index(doc_id)] - score) <= 1e-3 * max(1.0, score)
    if matched < 0.8 * len(sample):
        raise ValueError(f"{index_dir}: only {matched} of {len(sample)} sampled documents, encoded by this model, "
                         f"find themselves in the index: it holds another model's embeddings, or another corpus "
                         f"with the same ids as {data.name}")
    missing = len(corpus) - len(index.doc_ids)
    if missing:
        import warnings

        warnings.warn(f"{index_dir}: {missing} documents of {data.name}'s corpus are not in the index "
                      "(see the encoding run's dead letters); they cannot be retrieved", stacklevel=2)
