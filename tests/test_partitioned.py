"""The partitioned (IVF) retriever in TensorFlow ops: exact within what it probes, exact when it probes every
partition, probes tuned to a recall target, and its SavedModel answering alike under TF Serving's TF1 loader,
tf.saved_model.load and hub.KerasLayer."""

import json
import subprocess
import sys

import numpy as np
import pytest

from samtone_tf.index.partitioned import (PartitionedIndex, build_partitions, default_partition_count, partition_counts,
                                          partitioned_top_k, probes_holding_k, tune_probes)
from samtone_tf.index.search import ExactIndex
from samtone_tf.index.tuning import tune_partitions
from samtone_tf.serving import run_like_tf_serving, run_tf2
from tests.helpers import command_in_process
from tests.test_index import clustered, unit


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(11)
    centers = unit(rng.normal(size=(120, 32)))
    documents = clustered(rng, 6000, centers, spread=0.15)
    return documents, clustered(rng, 400, centers, spread=0.15), clustered(rng, 300, centers, spread=0.15)


def test_partitions_hold_every_document_once_in_contiguous_blocks(corpus):
    documents, _, _ = corpus
    partitions = build_partitions(documents, count=40)
    assert partitions.count == 40 and partitions.offsets[0] == 0 and partitions.offsets[-1] == len(documents)
    assert sorted(partitions.rows.tolist()) == list(range(len(documents)))
    np.testing.assert_array_equal(partitions.embeddings, documents[partitions.rows])
    # Each document sits in the partition of its nearest centroid.
    nearest = np.argmax(documents @ partitions.centroids.T, axis=1)
    block = np.searchsorted(partitions.offsets, np.arange(len(documents)), side="right") - 1
    np.testing.assert_array_equal(nearest[partitions.rows], block)
    np.testing.assert_allclose(np.linalg.norm(partitions.centroids, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("probes", [1, 3, 40])
def test_the_search_is_the_exact_top_k_of_the_probed_partitions(corpus, probes):
    documents, queries, _ = corpus
    partitions = build_partitions(documents, count=40)
    queries = queries[:50]
    scores, positions = partitioned_top_k(queries, partitions.centroids, partitions.embeddings,
                                          partitions.offsets, probes, 7)
    # Reference in float64: for each query, all documents of its `probes` nearest partitions, ranked.
    centroid_scores = queries.astype(np.float64) @ partitions.centroids.T.astype(np.float64)
    for i, query in enumerate(queries.astype(np.float64)):
        probed = np.argsort(-centroid_scores[i], kind="stable")[:probes]
        members = np.concatenate([np.arange(partitions.offsets[p], partitions.offsets[p + 1]) for p in probed])
        member_scores = partitions.embeddings[members].astype(np.float64) @ query
        want = members[np.argsort(-member_scores, kind="stable")[:7]]
        np.testing.assert_allclose(scores[i], np.sort(member_scores)[::-1][:7], atol=1e-5)
        assert set(positions[i].numpy().tolist()) == set(want.tolist())
    if probes == 40:  # every partition: the exact search
        exact_ids, _ = ExactIndex(documents, np.arange(len(documents))).search(queries, 7)
        np.testing.assert_array_equal(partitions.rows[positions.numpy()], exact_ids.astype(np.int64))


def test_probes_always_hold_k_documents():
    rng = np.random.default_rng(3)
    documents = unit(rng.normal(size=(200, 8)))
    partitions = build_partitions(documents, count=50)  # ~4 documents a partition, some fewer
    sizes = np.sort(np.diff(partitions.offsets))
    for k in (1, 10, 30):
        probes = probes_holding_k(partitions, k)
        assert sizes[:probes].sum() >= k and (probes == 1 or sizes[: probes - 1].sum() < k)
        scores, positions = partitioned_top_k(documents[:40], partitions.centroids, partitions.embeddings,
                                              partitions.offsets, probes, k)
        assert np.isfinite(scores.numpy()).all() and (positions.numpy() >= 0).all()
    truth = ExactIndex(documents, np.arange(200)).search(documents[:40], 30)[0].astype(np.int64)
    probes, _ = tune_probes(partitions, documents[:40], truth, 0.01, k=30)
    assert probes >= probes_holding_k(partitions, 30)


def test_an_empty_batch_of_queries_gets_an_empty_answer(corpus):
    documents, _, _ = corpus
    partitions = build_partitions(documents, count=40)
    scores, positions = partitioned_top_k(np.zeros((0, documents.shape[1]), np.float32), partitions.centroids,
                                          partitions.embeddings, partitions.offsets, 3, 7)
    assert scores.shape == (0, 7) and positions.shape == (0, 7)


def test_tuned_probes_meet_the_target_on_unseen_queries_and_are_the_fewest(corpus):
    documents, tuning, unseen = corpus
    partitions = build_partitions(documents, count=60)
    exact = ExactIndex(documents, np.arange(len(documents)))
    truth = exact.search(tuning, 10)[0].astype(np.int64)
    probes, recall = tune_probes(partitions, tuning, truth, 0.95, k=10)
    assert recall >= 0.95 and 1 < probes < 60
    index = PartitionedIndex(partitions, np.arange(len(documents)), probes)
    found, _ = index.search(unseen, 10)
    unseen_truth = exact.search(unseen, 10)[0]
    recall_unseen = np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, unseen_truth)])
    assert recall_unseen >= 0.95 - 0.03
    fewer, _ = index.search(tuning, 10, probes=probes - 1)
    recall_fewer = np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(fewer, truth)])
    assert recall_fewer < 0.95


def test_the_partition_counts_tried_are_multiples_of_sqrt_n_and_leave_partitions_of_several_documents():
    assert partition_counts(1_000_000) == [1000, 2000, 4000]
    assert partition_counts(5183) == [72, 144, 288]
    assert partition_counts(40) == [6, 10]  # 12 and 24 capped at 40 // 4: partitions of 4 documents on average
    assert partition_counts(1) == [1]
    assert default_partition_count(5183) == 72


def test_the_tuned_partitioning_is_the_fastest_reaching_the_target_and_meets_it_on_unseen_queries(corpus):
    documents, tuning, unseen = corpus
    exact = ExactIndex(documents, np.arange(len(documents)))
    truth = exact.search(tuning, 10)[0].astype(np.int64)
    messages = []
    partitions, probes, recall, report = tune_partitions(documents, tuning, truth, 0.95, k=10, say=messages.append)
    tried = report["tried"]
    assert [t["partitions"] for t in tried] == partition_counts(len(documents)) == [77, 154, 308]
    assert all(t["recall"] >= 0.95 for t in tried) and len(messages) == 3
    fastest = max(tried, key=lambda t: t["queries_per_second"])
    assert (partitions.count, probes, recall) == (fastest["partitions"], fastest["probes"], fastest["recall"])
    assert report["partitions"] == partitions.count and report["target_recall"] == 0.95
    # Each partitioning's probes are its own fewest reaching the target.
    for trial in tried:
        again = build_partitions(documents, trial["partitions"])
        assert tune_probes(again, tuning, truth, 0.95, k=10) == (trial["probes"], trial["recall"])
    found, _ = PartitionedIndex(partitions, np.arange(len(documents)), probes).search(unseen, 10)
    unseen_truth = exact.search(unseen, 10)[0]
    recall_unseen = np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, unseen_truth)])
    assert recall_unseen >= 0.95 - 0.03


@pytest.mark.slow
def test_an_exported_partitioned_retriever_serves_alike_under_every_loader(tiny_model_dir, tmp_path, shared_data):
    out = tmp_path / "out"
    # The command through its main in this process; the consumer's hub.KerasLayer below in a fresh one.
    result = command_in_process("samtone_tf.export", "--model_dir", tiny_model_dir, "--out", out, "--corpus", "beir:scifact",
                                "--data_dir", shared_data, "--retriever", "partitioned", "--target_recall", "0.9",
                                "--k", "10")
    assert result.returncode == 0, result.stderr[-2000:]
    search = json.loads((out / "manifest.json").read_text())["models"]["retriever"]["search"]
    assert search["kind"] == "partitioned" and search["partitions"] in (72, 144, 288)  # sqrt(5183) x 1, 2, 4
    assert [t["partitions"] for t in search["tried"]] == [72, 144, 288]
    assert search["recall"] >= 0.9 and 1 <= search["probes"] <= search["partitions"]
    assert search["queries_per_second"] == max(t["queries_per_second"] for t in search["tried"])
    texts = ["what causes cancer", "vitamin d deficiency", "0-dimensional biomaterials show inductive properties."]
    served = run_like_tf_serving(out / "retriever" / "1", texts)
    reference = run_tf2(out / "retriever" / "1", texts)
    np.testing.assert_array_equal(served["doc_ids"], reference["doc_ids"])
    np.testing.assert_allclose(served["scores"], reference["scores"], atol=1e-6)
    assert served["doc_ids"].shape == (3, 10) and np.isfinite(served["scores"]).all()
    checked = command_in_process("samtone_tf.export", "--check", out)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]

    script = f"""
import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import json
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401
layer = hub.KerasLayer({str(out / 'retriever' / '1')!r}, signature="serving_default", signature_outputs_as_dict=True)
outputs = layer(tf.constant({texts!r}))
print(json.dumps(outputs["doc_ids"].numpy().astype(str).tolist()))
"""
    hub_result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert hub_result.returncode == 0, hub_result.stderr[-3000:]
    assert json.loads(hub_result.stdout.strip().splitlines()[-1]) == served["doc_ids"].astype(str).tolist()
