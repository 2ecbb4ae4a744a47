"""ScaNN tuned to a recall target: the target is met on queries the tuning never saw, the choice is the
fastest that reaches it among those tried, it survives save/load, and documents stand in for queries."""

import numpy as np
import pytest

from samtone_tf.index.search import ExactIndex, ScannIndex
from samtone_tf.index.tuning import recall_at_k, tune_scann, tune_scann_for_targets, tuning_queries
from tests.test_index import clustered, unit

TOLERANCE = 0.03  # recall on unseen queries may fall this far below the target (sampling noise over ~300 queries)


@pytest.fixture(scope="module")
def clustered_corpus():
    rng = np.random.default_rng(5)
    centers = unit(rng.normal(size=(400, 64)))
    corpus = clustered(rng, 40_000, centers, spread=0.08)
    tuning, unseen = clustered(rng, 600, centers, spread=0.08), clustered(rng, 300, centers, spread=0.08)
    return corpus, [f"d{i}" for i in range(len(corpus))], tuning, unseen


@pytest.mark.parametrize("target", [0.9, 0.99])
def test_the_tuned_index_meets_its_target_on_unseen_queries(clustered_corpus, target, tmp_path):
    corpus, ids, tuning, unseen = clustered_corpus
    index = tune_scann(corpus, ids, tuning, target, k=10, say=lambda *a: None)
    report = index.settings["tuning"]
    assert report["reached"] and report["tuning_recall"] >= target
    assert report["held_out_recall"] >= target - TOLERANCE
    truth, _ = ExactIndex(corpus, ids).search(unseen, 10)
    found, _ = index.search(unseen, 10)
    assert recall_at_k(found, truth) >= target - TOLERANCE

    # The choice is the fastest configuration that reached the target among those tried.
    reaching = [t for t in report["tried"] if t["recall"] >= target]
    assert max(t["queries_per_second"] for t in reaching) == report["queries_per_second"]
    chosen = next(t for t in reaching if t["queries_per_second"] == report["queries_per_second"])
    assert (index.settings["num_leaves"], index.settings["num_leaves_to_search"], index.settings["reorder"]) == (
        chosen["num_leaves"], chosen["num_leaves_to_search"], chosen["reorder"])
    assert report["builds"] <= 3

    # Saved and loaded, it searches with the tuned settings and answers identically.
    index.save(tmp_path / "index")
    loaded = ScannIndex.load(tmp_path / "index")
    assert loaded.settings["tuning"]["held_out_recall"] == report["held_out_recall"]
    again, _ = loaded.search(unseen, 10)
    np.testing.assert_array_equal(again, found)


def test_several_targets_share_one_walk_and_each_gets_the_fastest_that_reaches_it(clustered_corpus):
    corpus, ids, tuning, unseen = clustered_corpus
    targets = [0.99, 0.9, 0.95]  # any order: the answer follows it
    indexes = tune_scann_for_targets(corpus, ids, tuning, targets, k=10, max_builds=2, say=lambda *a: None)
    assert [i.settings["tuning"]["target_recall"] for i in indexes] == targets
    tried = indexes[0].settings["tuning"]["tried"]
    assert all(i.settings["tuning"]["tried"] == tried for i in indexes)  # one walk, not three
    truth, _ = ExactIndex(corpus, ids).search(unseen, 10)
    for target, index in zip(targets, indexes):
        report = index.settings["tuning"]
        reaching = [t for t in tried if t["recall"] >= target]
        assert report["reached"] and report["queries_per_second"] == max(t["queries_per_second"] for t in reaching)
        assert report["held_out_recall"] >= target - TOLERANCE
        found, _ = index.search(unseen, 10)
        assert recall_at_k(found, truth) >= target - TOLERANCE
    # Indexes chosen from one tree share its searcher but keep their own settings.
    assert len({id(i.settings) for i in indexes}) == 3
    for index in indexes:
        trial = next(t for t in tried if t["queries_per_second"] == index.settings["tuning"]["queries_per_second"])
        assert (trial["num_leaves"], trial["num_leaves_to_search"], trial["reorder"]) == (
            index.settings["num_leaves"], index.settings["num_leaves_to_search"], index.settings["reorder"])


def test_an_unreachable_target_keeps_the_highest_recall_and_says_so(clustered_corpus, monkeypatch):
    import samtone_tf.index.tuning as tuning_module

    corpus, ids, tuning, _ = clustered_corpus
    monkeypatch.setattr(tuning_module, "LEAF_FRACTIONS", (0.005, 0.01))  # a grid too small for the target
    monkeypatch.setattr(tuning_module, "REORDER_DEPTHS", (10,))
    report = tune_scann(corpus, ids, tuning, 0.999, k=10, max_builds=2, say=lambda *a: None).settings["tuning"]
    assert not report["reached"]
    assert report["tuning_recall"] == max(t["recall"] for t in report["tried"]) < 0.999
    assert len(report["tried"]) == 4  # 2 trees x 2 fractions x 1 depth: the search is bounded


def test_documents_stand_in_for_queries_without_finding_themselves():
    rng = np.random.default_rng(6)
    corpus = unit(rng.normal(size=(3000, 16)))
    queries, excluded = tuning_queries(None, corpus, size=200, seed=1)
    assert queries.shape == (200, 16) and len(set(excluded.tolist())) == 200
    np.testing.assert_array_equal(queries, corpus[excluded])
    index = tune_scann(corpus, list(range(3000)), queries, 0.95, k=5, excluded_rows=excluded, say=lambda *a: None)
    # Below ScaNN's brute-force size the search is exact: recall 1 with each document's own row left out.
    assert index.settings["mode"] == "brute_force" and index.settings["tuning"]["held_out_recall"] == 1.0
    real_queries = unit(rng.normal(size=(50, 16)))
    chosen, none_excluded = tuning_queries(real_queries, corpus, size=20, seed=1)
    assert len(chosen) == 20 and (none_excluded == -1).all()
    assert {tuple(q) for q in chosen} <= {tuple(q) for q in real_queries}


def test_bad_targets_are_refused(clustered_corpus):
    corpus, ids, tuning, _ = clustered_corpus
    for target in (0.0, 1.5):
        with pytest.raises(ValueError, match="target_recall must be in"):
            tune_scann(corpus, ids, tuning, target)
    with pytest.raises(ValueError, match="at least 2 queries"):
        tune_scann(corpus, ids, tuning[:1], 0.9)
