"""tf.data training pipelines: seeded order, full batches, unique ids, sharding across pipelines."""

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.data.pipeline import distributed_training_dataset, global_batches, training_dataset
from samtone_tf.data.records import StreamedPairs, TrainingPair
from tests.helpers import mirrored_strategy


def make_pairs(count=40, shared_every=4):
    """Pairs where every `shared_every`-th pair repeats the previous pair's query id (like SQuAD
    questions of one paragraph pointing at one sentence)."""
    pairs = []
    for i in range(count):
        query_id = f"q{i - 1}" if i % shared_every == 0 and i else f"q{i}"
        pairs.append(TrainingPair(query_id, f"query {i}", f"d{i // 2}", f"document {i // 2}",
                                  tuple(f"negative {i}-{k}" for k in range(3))))
    return pairs


def take(dataset, batches):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(batches)]


def test_batches_are_full_seeded_and_deterministic():
    pairs = make_pairs()
    first = take(training_dataset(pairs, 8, seed=1), 6)
    again = take(training_dataset(pairs, 8, seed=1), 6)
    other = take(training_dataset(pairs, 8, seed=2), 6)
    assert all(b["query"].shape == (8,) for b in first)
    assert all(np.array_equal(a["query"], b["query"]) for a, b in zip(first, again))
    assert not all(np.array_equal(a["query"], b["query"]) for a, b in zip(first, other))


def test_unique_ids_keep_every_batch_free_of_repeats_and_lose_nothing():
    pairs = make_pairs(40)
    batches = list(zip(range(40), global_batches(pairs, 8, seed=3, unique_ids=True)))
    for _, batch in batches:
        assert len({p.query_id for p in batch}) == 8 and len({p.document_id for p in batch}) == 8
    # Over many epochs every pair is used about equally often: none starves in the waiting line.
    counts = {}
    for _, batch in batches:
        for pair in batch:
            counts[pair.query] = counts.get(pair.query, 0) + 1
    assert set(counts) == {p.query for p in pairs}
    assert max(counts.values()) - min(counts.values()) <= 2


def test_without_unique_ids_repeats_can_occur():
    pairs = make_pairs(40)
    repeats = [b for _, b in zip(range(50), global_batches(pairs, 8, seed=3, unique_ids=False))
               if len({p.document_id for p in b}) < 8]
    assert repeats


def test_hard_negatives_come_from_the_pairs_own():
    pairs = make_pairs(16)
    batch = take(training_dataset(pairs, 4, seed=0, hard_negatives=2), 1)[0]
    assert batch["hard_negatives"].shape == (4, 2)
    own = {p.query.encode(): {n.encode() for n in p.hard_negatives} for p in pairs}
    for query, negatives in zip(batch["query"], batch["hard_negatives"]):
        assert set(negatives) <= own[query]
    # Each hard negative carries a document id: the data's, else one derived from its text.
    from samtone_tf.data.ids import text_id

    for negatives, ids in zip(batch["hard_negatives"], batch["hard_negative_ids"]):
        assert [i.decode() for i in ids] == [text_id("d", n.decode()) for n in negatives]
    with_ids = [TrainingPair("q1", "q", "d1", "d", ("n1", "n2"), ("D7", "D8"))]
    row = take(training_dataset(with_ids, 1, seed=0, hard_negatives=2), 1)[0]
    assert {(n, i) for n, i in zip(row["hard_negatives"][0], row["hard_negative_ids"][0])} <= {
        (b"n1", b"D7"), (b"n2", b"D8")}
    # More negatives than a pair has: sampled with replacement.
    assert take(training_dataset(pairs, 4, hard_negatives=5), 1)[0]["hard_negatives"].shape == (4, 5)
    with pytest.raises(ValueError, match="the pair of query 'q' has none"):
        training_dataset([TrainingPair("q", "q", "d", "d")], 1, hard_negatives=1)


def test_input_pipelines_split_each_global_batch_in_replica_order():
    pairs = make_pairs(64)
    per_replica, replicas, pipelines = 4, 4, 2
    single = take(training_dataset(pairs, per_replica * replicas, seed=5), 3)
    shards = []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=replicas)
        shards.append(take(training_dataset(pairs, per_replica, seed=5, input_context=context), 6))
    for step in range(3):
        # Pipeline p serves replicas 2p and 2p + 1 of global step `step`, in that order.
        replica_batches = [shards[p][2 * step + j]["query"] for p in range(pipelines) for j in range(2)]
        np.testing.assert_array_equal(np.concatenate(replica_batches), single[step]["query"])


def test_streamed_pairs_are_shuffled_through_a_buffer():
    pairs = make_pairs(30)
    streamed = StreamedPairs(lambda: iter(pairs), "test")
    batches = global_batches(streamed, 5, seed=0, unique_ids=False, shuffle_buffer=10, repeat=False)
    order = [p.query for batch in batches for p in batch]
    assert sorted(order) == sorted(p.query for p in pairs)  # one pass, each pair once
    assert order != [p.query for p in pairs]


def test_empty_pairs_are_an_error():
    with pytest.raises(ValueError, match="no training pairs"):
        next(global_batches([], 4, seed=0))


def test_distributed_dataset_feeds_each_replica_its_slice():
    pairs = make_pairs(32)
    strategy = mirrored_strategy(2)
    dataset = distributed_training_dataset(strategy, pairs, 8, seed=9)
    expected = take(training_dataset(pairs, 8, seed=9), 1)[0]["query"]
    batch = next(iter(dataset))
    local = [v.numpy() for v in strategy.experimental_local_results(batch["query"])]
    np.testing.assert_array_equal(np.concatenate(local), expected)
    with pytest.raises(ValueError, match="not divisible"):
        distributed_training_dataset(strategy, pairs, 7)


def test_skipping_batches_resumes_the_same_sequence():
    pairs = make_pairs(40)
    full = take(training_dataset(pairs, 4, seed=3, hard_negatives=1), 8)
    resumed = take(training_dataset(pairs, 4, seed=3, skip_batches=5), 3)
    for got, want in zip(resumed, full[5:]):
        np.testing.assert_array_equal(got["query"], want["query"])


def test_too_few_distinct_ids_for_a_batch_is_an_error_not_a_hang():
    pairs = [TrainingPair(f"q{i}", "q", f"d{i % 3}", "d") for i in range(20)]  # only 3 documents
    with pytest.raises(ValueError, match="cannot fill a global batch of 4 pairs with distinct"):
        next(global_batches(pairs, 4, seed=0, unique_ids=True))
    assert len(next(global_batches(pairs, 4, seed=0, unique_ids=False))) == 4
    with pytest.raises(ValueError, match="the training data has only 3"):
        training_dataset(pairs, 4)
    # Fewer pairs than a batch, without unique ids: batches span epochs.
    assert len(next(global_batches(pairs[:3], 8, seed=0, unique_ids=False))) == 8
