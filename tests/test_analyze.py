"""python -m samtone_tf.analyze: t-SNE and similarity plots with their numbers."""

import json

import numpy as np
import pytest

from samtone_tf.analysis import similarity_statistics
from samtone_tf.analyze import main
from samtone_tf.model.towers import tiny_dual_encoder
from tests.helpers import TINY_VOCABULARY

# Trains beyond a few steps, exports SavedModels or starts subprocesses: out of the fast loop.
pytestmark = pytest.mark.slow


def test_similarity_statistics_on_known_vectors():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    documents = np.array([[1.0, 0.0], [0.6, 0.8]])
    numbers = similarity_statistics(queries, documents)
    assert numbers["mean_query_document_similarity"] == pytest.approx((1.0 + 0.6 + 0.0 + 0.8) / 4)
    assert numbers["mean_query_query_similarity"] == pytest.approx(0.0)
    assert numbers["query_query_to_query_document_ratio"] == pytest.approx(0.0)
    assert numbers["mean_top1_query_document_similarity"] == pytest.approx((1.0 + 0.8) / 2)
    assert numbers["centroid_cosine"] == pytest.approx(
        np.dot([0.5, 0.5], [0.8, 0.4]) / (np.linalg.norm([0.5, 0.5]) * np.linalg.norm([0.8, 0.4])))


def test_analyze_writes_plots_and_numbers(tmp_path, shared_data):
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    model.save(tmp_path / "model.keras")
    out = tmp_path / "analysis"
    assert main(["--model", str(tmp_path / "model.keras"), "--dataset", "beir:medline", "--out", str(out)]) == 0
    for name in ("tsne.png", "top1_similarity.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    numbers = json.loads((out / "analysis.json").read_text())
    assert numbers["queries"] == 30 and numbers["documents"] > 30
    assert numbers["query_query_to_query_document_ratio"] == pytest.approx(
        numbers["mean_query_query_similarity"] / numbers["mean_query_document_similarity"])
