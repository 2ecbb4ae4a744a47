"""Cheaper corpus codes (index.quantized): a Matryoshka prefix, int8 and binary codes, rescoring; against a NumPy
reference written here from the definitions, and through `evaluate --dims --precision --rescore`."""

import json

import numpy as np
import pytest

from samtone_tf.index.quantized import QuantizedIndex, binary_codes, calibrate_int8, int8_codes

N, D, Q = 300, 24, 12


def unit(rng, *shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    corpus = unit(rng, N, D)
    queries = unit(rng, Q, D)
    return corpus, queries, [f"d{i}" for i in range(N)]


def reference_scores(corpus, queries, dims, precision):
    """float64 scores of every (query, document), from the definitions."""
    def prefix(x):
        x = np.asarray(x, np.float64)[:, :dims]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    c, q = prefix(corpus), prefix(queries)
    if precision == "float32":
        return q @ c.T
    if precision == "int8":
        low, high = c.min(axis=0), c.max(axis=0)
        step = (high - low) / 255.0
        decoded = low + step * np.clip(np.rint((c - low) / step), 0, 255)
        return q @ decoded.T
    cb, qb = c > 0, q > 0
    return -np.array([[np.sum(a != b) for b in cb] for a in qb], np.float64)


def reference_top(scores, k):
    return [sorted(range(scores.shape[1]), key=lambda j: (-scores[i, j], j))[:k] for i in range(len(scores))]


@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
@pytest.mark.parametrize("dims", [24, 8])
def test_the_codes_rank_as_the_reference(data, dims, precision):
    corpus, queries, ids = data
    index = QuantizedIndex(corpus, ids, dims=dims, precision=precision)
    found, scores = index.search(queries, k=10)
    want = reference_scores(corpus, queries, dims, precision)
    for row in range(Q):
        np.testing.assert_allclose(scores[row], np.sort(want[row])[::-1][:10], atol=1e-4)
        if precision != "binary":  # binary scores tie often: the ids of a tie may come in either order
            assert [int(d[1:]) for d in found[row]] == reference_top(want, 10)[row]


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_rescoring_ranks_the_shortlist_by_the_float32_prefix(data, precision):
    corpus, queries, ids = data
    dims, shortlist = 16, 40
    index = QuantizedIndex(corpus, ids, dims=dims, precision=precision, rescore=shortlist)
    found, scores = index.search(queries, k=10)
    codes, exact = reference_scores(corpus, queries, dims, precision), reference_scores(corpus, queries, dims,
                                                                                        "float32")
    for row in range(Q):
        candidates = set(reference_top(codes, shortlist)[row])
        want = sorted(candidates, key=lambda j: (-exact[row, j], j))[:10]
        if precision == "binary":  # ties at the shortlist's edge: compare the scores of what was found
            np.testing.assert_allclose(scores[row], [exact[row, j] for j in want], atol=1e-5)
        else:
            assert [int(d[1:]) for d in found[row]] == want
            np.testing.assert_allclose(scores[row], exact[row, want], atol=1e-5)


def test_a_shortlist_as_large_as_the_corpus_gives_the_exact_float_ranking(data):
    corpus, queries, ids = data
    exact = QuantizedIndex(corpus, ids).search(queries, 10)
    rescored = QuantizedIndex(corpus, ids, precision="binary", rescore=N).search(queries, 10)
    assert (exact[0] == rescored[0]).all()
    np.testing.assert_allclose(exact[1], rescored[1], atol=1e-6)


def test_codes_and_their_bytes(data):
    corpus, _, ids = data
    low, step = calibrate_int8(corpus)
    codes = int8_codes(corpus, low, step)
    assert codes.dtype == np.int8 and codes.min() == -128 and codes.max() == 127
    np.testing.assert_allclose(low + step * (codes.astype(np.float32) + 128), corpus, atol=float(step.max()) / 2 + 1e-6)
    bits = binary_codes(corpus[:, :8])
    assert bits.shape == (N, 1) and (np.unpackbits(bits, axis=1) == (corpus[:, :8] > 0)).all()
    assert QuantizedIndex(corpus, ids).code_bytes == N * D * 4
    assert QuantizedIndex(corpus, ids, precision="int8").code_bytes == N * D + 2 * D * 4
    assert QuantizedIndex(corpus, ids, dims=16, precision="binary").code_bytes == N * 2


@pytest.mark.parametrize("options,message", [({"dims": 0}, "dims must be in 1..24"), ({"dims": 25}, "1..24"),
                                              ({"precision": "int4"}, "precision must be one of"),
                                              ({"rescore": 0}, "rescore must be a positive")])
def test_bad_options_are_refused(data, options, message):
    corpus, _, ids = data
    with pytest.raises(ValueError, match=message):
        QuantizedIndex(corpus, ids, **options)


def test_evaluate_scores_a_model_with_codes_and_says_so(tmp_path, shared_data, tiny_model_dir, capsys):
    from samtone_tf import evaluate as evaluate_command

    out = tmp_path / "binary.json"
    assert evaluate_command.main(["--model", str(tiny_model_dir), "--dataset", "wikiqa", "--dims", "16",
                                  "--precision", "binary", "--rescore", "50", "--out", str(out)]) == 0
    assert "codes: 16 dimensions, binary" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["quantization"]["dims"] == 16 and result["quantization"]["rescore"] == 50
    assert evaluate_command.main(["--model", str(tiny_model_dir), "--dataset", "wikiqa", "--precision", "int8",
                                  "--index", "scann", "--out", str(tmp_path / "x.json")]) != 0
    assert "with --index scann, --dims D [--rescore K]" in capsys.readouterr().err
