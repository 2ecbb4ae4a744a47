"""Training reads the whole file by default, shuffled and cycled in epochs; --max_train_pairs samples the whole file
(not its head); --first_train_pairs is the head, asked for by name. (Before: the default was the first
steps x batch pairs, so a file whose head holds one query could not fill a batch, and a sorted file trained on
its first topic.)"""

import json
import subprocess
import sys

import pytest

from samtone_tf.data.datasets import load_training_pairs, sample_pairs
from samtone_tf.data.pipeline import global_batches, training_dataset
from samtone_tf.data.records import StreamedPairs, TrainingPair
from tests.helpers import REPOSITORY_ROOT


def write_sorted_flagembedding(path, head_rows=8, other_queries=12):
    """A FlagEmbedding file sorted by query: its first `head_rows` rows all belong to one query (as mined files
    whose queries hold many positives are), then `other_queries` queries with one positive each."""
    rows = [{"query": "who wrote the cat", "pos": [f"the cat was written by author {i}"], "neg": ["a dog"]}
            for i in range(head_rows)]
    rows += [{"query": f"where is the dog {i}", "pos": [f"the dog {i} sat on the mat"], "neg": ["a cat"]}
             for i in range(other_queries)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pairs_of(count):
    return [TrainingPair(f"q{i}", f"query {i}", f"d{i}", f"document {i}") for i in range(count)]


def test_a_sample_is_drawn_from_the_whole_file_in_file_order_and_is_seeded():
    pairs = pairs_of(1000)
    sample = sample_pairs(pairs, 100, seed=0)
    positions = [int(p.query_id[1:]) for p in sample]
    assert len(set(positions)) == 100 and positions == sorted(positions)
    assert max(positions) > 800 and min(positions) < 200  # not the head
    assert sample_pairs(pairs, 100, seed=0) == sample and sample_pairs(pairs, 100, seed=1) != sample
    assert sample_pairs(pairs, 5000, seed=0) == pairs


def test_a_sample_of_a_streamed_file_reaches_its_end_and_holds_only_the_sample():
    pairs = pairs_of(5000)
    streamed = StreamedPairs(lambda: iter(pairs), "5000 pairs")
    sample = sample_pairs(streamed, 50, seed=4)
    positions = [int(p.query_id[1:]) for p in sample]
    assert len(set(positions)) == 50 and positions == sorted(positions)
    assert max(positions) > 4000
    assert sample_pairs(streamed, 50, seed=4) == sample


def test_load_training_pairs_samples_the_whole_file_or_takes_its_head(tmp_path):
    path = write_sorted_flagembedding(tmp_path / "mined.jsonl")
    name = f"flagembedding:{path}"
    everything = load_training_pairs(name)
    assert len(everything) == 20
    head = load_training_pairs(name, max_pairs=8)
    assert {p.query for p in head} == {"who wrote the cat"}
    sample = load_training_pairs(name, sample=8, seed=0)
    assert len(sample) == 8 and len({p.query for p in sample}) > 1
    with pytest.raises(ValueError, match="either max_pairs"):
        load_training_pairs(name, max_pairs=4, sample=4)


def test_the_pairs_drawn_over_a_run_cover_the_whole_file_even_when_its_head_holds_one_query(tmp_path):
    pairs = load_training_pairs(f"flagembedding:{write_sorted_flagembedding(tmp_path / 'mined.jsonl')}")
    batches = global_batches(pairs, 4, seed=0, unique_ids=True)
    drawn = [pair for _, batch in zip(range(3 * len(pairs) // 4), batches) for pair in batch]
    assert {(p.query_id, p.document_id) for p in drawn} == {(p.query_id, p.document_id) for p in pairs}
    for batch in (drawn[i:i + 4] for i in range(0, len(drawn), 4)):
        assert len({p.query_id for p in batch}) == 4  # distinct ids in every batch


def test_a_resumed_run_continues_the_same_order_of_a_sample():
    pairs = sample_pairs(pairs_of(300), 40, seed=2)

    def batches(skip):
        dataset = training_dataset(pairs, 4, seed=2, skip_batches=skip)
        return [[q.decode() for q in batch["query_id"].numpy()] for batch in dataset.take(6)]

    uninterrupted = batches(0)
    assert batches(3)[:3] == uninterrupted[3:]
    assert sample_pairs(pairs_of(300), 40, seed=2) == pairs  # the resumed run draws the same sample


def train(tmp_path, *extra):
    data = write_sorted_flagembedding(tmp_path / "mined.jsonl")
    return subprocess.run(
        [sys.executable, "-m", "samtone_tf.train", "--model", "tiny", "--dataset", f"flagembedding:{data}",
         "--model_dir", str(tmp_path / "run"), "--eval_datasets", "", "--steps", "2", "--batch_size", "4",
         "--no-export", *extra], cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_file_whose_head_holds_one_query_trains_by_default_on_every_pair(tmp_path):
    result = train(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "20 pairs, every pair of the file; shuffled each epoch (seed 0); 2 steps x 4 = 0.40 epochs" in output
    both = train(tmp_path, "--max_train_pairs", "6", "--first_train_pairs", "6")
    assert both.returncode == 2 and "not both" in both.stderr and "Traceback" not in both.stderr
