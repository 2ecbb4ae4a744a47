"""ScaNN on a Matryoshka prefix (index.search.ScannIndex with `dims`): the searcher holds the first dims re-normalised,
its best `rescore` candidates are re-ranked at the full dimension; against a NumPy reference from the definition,
saved and loaded back, and refused when its full-dimension embeddings are missing or do not fit."""

import json

import numpy as np
import pytest

from samtone_tf.index.search import ScannIndex, load_index

N, D, Q, DIMS, RESCORE, K = 400, 24, 16, 8, 40, 10


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    return unit(rng.normal(size=(N, D))), unit(rng.normal(size=(Q, D))), [f"d{i}" for i in range(N)]


def reference(corpus, queries, dims, rescore, k):
    """(rows, scores) in float64: the `rescore` best by the re-normalised prefix, ranked by the full dot product."""
    def prefix(x):
        x = np.asarray(x, np.float64)[:, :dims]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    shortlist = np.argsort(-(prefix(queries) @ prefix(corpus).T), axis=1, kind="stable")[:, :rescore]
    full = np.einsum("qd,qkd->qk", np.asarray(queries, np.float64), np.asarray(corpus, np.float64)[shortlist])
    order = np.argsort(-full, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(shortlist, order, 1), np.take_along_axis(full, order, 1)


# Brute force (the default below 20,000 documents) and a tree searching every leaf and re-ordering every document:
# both exact at
# the prefix, so the whole search equals the reference.
TREE = dict(mode="tree_ah", num_leaves=8, num_leaves_to_search=8, training_sample_size=N, spherical=True,
            dimensions_per_block=2, anisotropic_quantization_threshold=0.2, reorder=N)


@pytest.mark.parametrize("settings", [None, TREE], ids=["brute_force", "tree_all_leaves"])
def test_a_prefix_searcher_re_ranked_at_full_dimension_equals_the_reference(data, settings):
    corpus, queries, ids = data
    index = ScannIndex(corpus, ids, k=K, settings=settings, dims=DIMS, rescore=RESCORE)
    rows, scores = index.search(queries, K, ids=False)
    expected_rows, expected_scores = reference(corpus, queries, DIMS, RESCORE, K)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    # The prefix costs ranking quality the full-dimension re-ranking cannot recover beyond its shortlist, and
    # re-ranking is not a no-op: the reference at the prefix alone ranks otherwise.
    prefix_only_rows, _ = reference(corpus, queries, DIMS, K, K)
    assert not np.array_equal(prefix_only_rows, expected_rows)


def test_the_shortlist_defaults_to_the_settings_reorder_and_the_full_dimension_keeps_scann_as_it_was(data):
    corpus, queries, ids = data
    index = ScannIndex(corpus, ids, k=K, dims=DIMS)
    assert index.rescore == 100 and index.describe() == {"dims": DIMS, "rescore": 100}
    rows, _ = index.search(queries, K, ids=False)
    np.testing.assert_array_equal(rows, reference(corpus, queries, DIMS, 100, K)[0])
    whole = ScannIndex(corpus, ids, k=K, dims=D)
    assert whole.full is None and whole.describe() == {}
    rows, scores = whole.search(queries, K, ids=False)
    np.testing.assert_array_equal(rows, np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :K])


def test_saved_and_loaded_back_it_answers_alike_from_memory_mapped_embeddings(data, tmp_path):
    corpus, queries, ids = data
    index = ScannIndex(corpus, ids, k=K, settings=TREE, dims=DIMS, rescore=RESCORE)
    index.save(tmp_path / "prefix")
    manifest = json.loads((tmp_path / "prefix" / "manifest.json").read_text())
    assert (manifest["dims"], manifest["rescore"], manifest["dimension"]) == (DIMS, RESCORE, D)
    loaded = load_index(tmp_path / "prefix")
    assert isinstance(loaded.full, np.memmap)
    for a, b in zip(index.search(queries, K), loaded.search(queries, K)):
        np.testing.assert_array_equal(a, b)


def test_a_prefix_index_without_fitting_full_embeddings_is_refused(data, tmp_path):
    corpus, _, ids = data
    ScannIndex(corpus, ids, k=K, dims=DIMS, rescore=RESCORE).save(tmp_path / "prefix")
    np.save(tmp_path / "prefix" / "full.npy", corpus[:, :DIMS])
    with pytest.raises(ValueError, match=r"full-dimension embeddings of shape \(400, 8\)"):
        load_index(tmp_path / "prefix")
    (tmp_path / "prefix" / "full.npy").unlink()
    with pytest.raises(ValueError, match="a 8-dimension index without its full-dimension embeddings"):
        load_index(tmp_path / "prefix")


@pytest.mark.parametrize("options,message", [({"dims": 0}, r"dims must be in 1\.\.24"), ({"dims": 25}, "1..24"),
                                             ({"dims": 8, "rescore": 0}, "positive number of candidates")])
def test_bad_options_are_refused(data, options, message):
    corpus, _, ids = data
    with pytest.raises(ValueError, match=message):
        ScannIndex(corpus, ids, **options)
