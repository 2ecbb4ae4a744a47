"""Hard-negative mining: every option selects exactly the candidates it should, positives are never mined,
exact and ScaNN mining agree, and a mined file trains (with its ids reaching the loss)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from samtone_tf.data.flagembedding import flagembedding_training_pairs
from samtone_tf.data.records import RetrievalData
from samtone_tf.index.search import ScannIndex
from samtone_tf.mining import MiningOptions, mine_hard_negatives
from tests.helpers import REPOSITORY_ROOT, command_in_process
from tests.test_data_validation import write_beir

QUERY = "which cat sat"
# Document i scores 0.95 - 0.05 i against the query; d3 is the positive, d5 repeats the query's text and
# d9 repeats the positive's text.
SCORES = [0.95 - 0.05 * i for i in range(14)]


class FixedEncoder:
    """The encoder protocol (encode_queries / encode_documents) over fixed unit vectors, so scores are known."""

    def __init__(self, texts_to_scores):
        self.scores = texts_to_scores

    def encode_queries(self, texts, batch_size=64, verbose=True):
        return np.tile(np.array([[1.0, 0.0]], np.float32), (len(texts), 1))

    def encode_documents(self, texts, batch_size=64, verbose=True):
        scores = np.array([self.scores[t] for t in texts], np.float32)
        return np.stack([scores, np.sqrt(1 - scores ** 2)], axis=1)


@pytest.fixture
def setup():
    texts = {f"d{i}": f"document number {i}" for i in range(14)}
    texts["d5"] = QUERY
    texts["d9"] = texts["d3"]
    corpus = {d: ("", t) for d, t in texts.items()}
    data = RetrievalData("toy", "train", corpus, {"q": QUERY}, {"q": {"d3": 1, "d12": 0}})
    # Text duplicates share a vector: give each text the score of its first document.
    by_text = {}
    for i in range(14):
        by_text.setdefault(texts[f"d{i}"], SCORES[i])
    return FixedEncoder(by_text), data


def mine(setup, **options):
    encoder, data = setup
    kept, dropped = mine_hard_negatives(encoder, data, MiningOptions(**options), verbose=False)
    return (kept[0] if kept else None), dropped


@pytest.mark.parametrize("options,expected", [
    (dict(num_negatives=3), ["d0", "d1", "d2"]),
    (dict(num_negatives=3, range_min=2, range_max=4), ["d2", "d4"]),
    (dict(num_negatives=3, margin=0.1), ["d6", "d7", "d8"]),  # score <= 0.80 - 0.1
    (dict(num_negatives=3, margin=0.05, margin_kind="relative"), ["d4", "d6", "d7"]),  # score <= 0.80 x 0.95
    (dict(num_negatives=3, max_score=0.88), ["d2", "d4", "d6"]),
    (dict(num_negatives=20, range_max=100), ["d0", "d1", "d2", "d4", "d6", "d7", "d8", "d10", "d11", "d12", "d13"]),
])
def test_each_option_selects_exactly_its_candidates(setup, options, expected):
    mined, _ = mine(setup, **options)
    assert mined.negative_ids == expected
    assert mined.positive_ids == ["d3"] and mined.positive_scores == [pytest.approx(0.80, abs=1e-6)]
    for doc_id, score in zip(mined.negative_ids, mined.negative_scores):
        assert score == pytest.approx(SCORES[int(doc_id[1:])], abs=1e-6)
    # Never the positive, its text twin, or the query's own text; a judged non-relevant document may be mined.
    assert not {"d3", "d9", "d5"} & set(mined.negative_ids)


def test_random_sampling_is_seeded_and_stays_in_range(setup):
    first, _ = mine(setup, num_negatives=3, range_max=8, sampling="random", seed=1)
    again, _ = mine(setup, num_negatives=3, range_max=8, sampling="random", seed=1)
    assert first.negative_ids == again.negative_ids
    picks = {tuple(mine(setup, num_negatives=3, range_max=8, sampling="random", seed=s)[0].negative_ids)
             for s in range(8)}
    assert len(picks) > 1
    allowed = {"d0", "d1", "d2", "d4", "d6", "d7", "d8", "d10"}  # the first 8 candidates
    assert all(set(p) <= allowed and len(p) == 3 for p in picks)
    assert all(list(p) == sorted(p, key=lambda d: int(d[1:])) for p in picks)  # best first


def test_queries_short_of_candidates_are_kept_with_fewer_or_dropped(setup):
    fewer, dropped = mine(setup, num_negatives=3, range_max=1)
    assert fewer.negative_ids == ["d0"] and not dropped
    none, dropped = mine(setup, num_negatives=3, range_max=1, min_negatives=2)
    assert none is None and [m.query_id for m in dropped] == ["q"]


def test_exact_and_scann_mining_agree(setup):
    encoder, data = setup
    options = MiningOptions(num_negatives=4, margin=0.02)
    exact, _ = mine_hard_negatives(encoder, data, options, verbose=False)
    scann, _ = mine_hard_negatives(encoder, data, options, index_factory=lambda e, ids: ScannIndex(e, ids, k=40),
                                   verbose=False)
    assert exact[0].negative_ids == scann[0].negative_ids


@pytest.mark.slow
def test_a_mined_file_trains_with_its_ids(tmp_path, tiny_model_dir):
    corpus = [json.dumps({"_id": f"d{i}", "title": "", "text": text}) for i, text in enumerate(
        ["the cat sat on the mat", "a dog sat", "the mat was red", "who is the cat", "dogs and cats",
         "the cat and the dog", "on the mat the cat sat", "where is the dog", "what sat on the mat", "the end"])]
    queries = [json.dumps({"_id": f"q{i}", "text": t}) for i, t in enumerate(["what sat", "where dog", "who cat"])]
    qrels = ["query-id\tcorpus-id\tscore", "q0\td0\t1", "q1\td7\t1", "q2\td3\t1"]
    root = write_beir(tmp_path / "toy", corpus=corpus, queries=queries, qrels=qrels)
    out = tmp_path / "mined.jsonl"
    mined = command_in_process("samtone_tf.mine", "--model", tiny_model_dir, "--dataset", f"beir:{root}", "--split", "test",
                               "--out", out, "--num_negatives", "2")  # the command's main; `train` typed below
    assert mined.returncode == 0, mined.stderr[-3000:]
    assert "3 queries: 3 kept with 6 negatives" in mined.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["query_id"] for r in records} == {"q0", "q1", "q2"}
    assert all(len(r["neg"]) == 2 == len(r["neg_ids"]) and not set(r["neg_ids"]) & set(r["pos_ids"]) for r in records)
    summary = json.loads((tmp_path / "mined.jsonl.summary.json").read_text())
    assert summary["negatives"] == 6 and summary["options"]["num_negatives"] == 2
    pairs = flagembedding_training_pairs(out)
    assert pairs[0].hard_negative_ids == tuple(records[0]["neg_ids"]) and pairs[0].document_id == records[0]["pos_ids"][0]
    trained = subprocess.run([sys.executable, "-m", "samtone_tf.train", "--model", "tiny", "--dataset",
                              f"flagembedding:{out}", "--hard_negatives", "2", "--batch_size", "2", "--steps", "2",
                              "--eval_datasets", "", "--no-export", "--model_dir", str(tmp_path / "trained")],
                             cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "step 2/2" in trained.stdout and "+ 4 hard negatives" in trained.stdout
