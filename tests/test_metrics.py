"""Metrics against pytrec_eval (trec_eval's own code) on random runs and qrels."""

import numpy as np
import pytest
import pytrec_eval

from samtone_tf.metrics import evaluate, per_query, ranked


def random_run_and_qrels(seed, queries=30, documents=60, graded=True, ties=False):
    rng = np.random.default_rng(seed)
    doc_ids = [f"d{i}" for i in range(documents)]
    run, qrels = {}, {}
    for q in range(queries):
        query_id = f"q{q}"
        retrieved = rng.choice(doc_ids, size=int(rng.integers(5, 40)), replace=False)
        scores = rng.integers(0, 5, size=len(retrieved)) if ties else rng.normal(size=len(retrieved))
        run[query_id] = {d: float(s) for d, s in zip(retrieved, scores)}
        judged = rng.choice(doc_ids, size=int(rng.integers(1, 12)), replace=False)
        grades = rng.integers(0, 4 if graded else 2, size=len(judged))
        grades[0] = max(grades[0], 1)  # at least one relevant document
        qrels[query_id] = {d: int(g) for d, g in zip(judged, grades)}
    return run, qrels


def truncated(run, k):
    return {q: {d: scores[d] for d in ranked(scores)[:k]} for q, scores in run.items()}


@pytest.mark.parametrize("seed,graded,ties", [(0, True, False), (1, False, False), (2, True, True), (3, False, True)])
def test_every_metric_matches_pytrec_eval(seed, graded, ties):
    run, qrels = random_run_and_qrels(seed, graded=graded, ties=ties)
    ours = per_query(run, qrels, ["P@1", "P@5", "P@10", "nDCG@10", "nDCG@5", "Recall@10", "Recall@100", "MAP",
                                  "MRR@10", "MRR@1000"])
    reference = pytrec_eval.RelevanceEvaluator(
        qrels, {"P.1,5,10", "ndcg_cut.5,10", "recall.10,100", "map"}
    ).evaluate(run)
    for query_id, values in ours.items():
        ref = reference[query_id]
        assert values["P@1"] == pytest.approx(ref["P_1"], abs=1e-6)
        assert values["P@5"] == pytest.approx(ref["P_5"], abs=1e-6)
        assert values["P@10"] == pytest.approx(ref["P_10"], abs=1e-6)
        assert values["nDCG@10"] == pytest.approx(ref["ndcg_cut_10"], abs=1e-6)
        assert values["nDCG@5"] == pytest.approx(ref["ndcg_cut_5"], abs=1e-6)
        assert values["Recall@10"] == pytest.approx(ref["recall_10"], abs=1e-6)
        assert values["Recall@100"] == pytest.approx(ref["recall_100"], abs=1e-6)
        assert values["MAP"] == pytest.approx(ref["map"], abs=1e-6)
    # trec_eval's recip_rank has no cut-off: MRR@10 is recip_rank of the run cut at 10.
    rr10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(truncated(run, 10))
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    for query_id, values in ours.items():
        assert values["MRR@10"] == pytest.approx(rr10[query_id]["recip_rank"], abs=1e-6)
        assert values["MRR@1000"] == pytest.approx(rr[query_id]["recip_rank"], abs=1e-6)


def test_ties_break_by_document_id_descending():
    assert ranked({"a": 1.0, "c": 1.0, "b": 2.0}) == ["b", "c", "a"]


def test_mean_skips_queries_without_relevant_documents_and_counts_missing_ones_as_zero():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 0}, "q3": {"d3": 2}}
    run = {"q1": {"d1": 0.9, "d2": 0.1}}
    assert evaluate(run, qrels, ["P@1"]) == {"P@1": 0.5}


def test_unknown_measures_are_rejected():
    with pytest.raises(ValueError, match="unknown measure"):
        evaluate({}, {"q": {"d": 1}}, ["F1@3"])
    with pytest.raises(ValueError, match="needs a cut-off"):
        evaluate({}, {"q": {"d": 1}}, ["nDCG"])


def test_paired_randomization_test_matches_scipy_exact_permutation_test():
    from scipy import stats

    from samtone_tf.metrics import paired_randomization_test

    rng = np.random.default_rng(4)
    for shift in (0.0, 0.3, 1.0):
        differences = rng.normal(shift, 1.0, size=12)
        want = stats.permutation_test((differences,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                      alternative="two-sided").pvalue
        assert paired_randomization_test(differences) == pytest.approx(want, abs=1e-9)


def test_paired_randomization_test_sampled_and_over_sets():
    from samtone_tf.metrics import paired_randomization_test

    rng = np.random.default_rng(5)
    clear = rng.normal(0.2, 1.0, size=2000)
    assert paired_randomization_test(clear) < 0.01
    null = rng.normal(0.0, 1.0, size=2000)
    assert paired_randomization_test(null) > 0.05
    # Over sets: the mean of the set means, each set flipped on its own.
    small, large = rng.normal(0.5, 0.1, size=8), rng.normal(-0.01, 1.0, size=3000)
    p = paired_randomization_test([small, large])
    assert 0.0 < p < 0.05  # the small set's large mean difference carries the average
