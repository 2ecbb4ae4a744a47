"""TFDS builders prepare offline from the shared files and read back what the readers read."""

import pytest
import json

import tensorflow_datasets as tfds

from samtone_tf.data import tfds_builders
from samtone_tf.data.beir import read_beir, write_beir
from samtone_tf.data.datasets import load_evaluation
from samtone_tf.data.squad import reqa_evaluation, reqa_training_pairs

# Trains beyond a few steps, exports SavedModels or starts subprocesses: out of the fast loop.
pytestmark = pytest.mark.slow


def prepare(builder, manual_dir):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def records(builder, split):
    return {
        r["id"].decode(): (
            r["title"].decode(), r["text"].decode(),
            {i.decode(): int(s) for i, s in zip(r["relevant"]["id"], r["relevant"]["score"])},
        )
        for r in tfds.as_numpy(builder.as_dataset(split=split))
    }


def test_beir_scifact_builds_offline_with_the_readers_counts(shared_data, tmp_path):
    builder = prepare(tfds_builders.Beir(config="scifact", data_dir=str(tmp_path)), shared_data)
    for split in ("test", "train"):
        data = read_beir(shared_data / "beir" / "scifact", split)
        got = records(builder, split)
        assert len(got) == len(data.queries)
        assert sum(len(relevant) for _, _, relevant in got.values()) == data.counts()["judgements"]
    corpus = records(builder, "corpus")
    assert len(corpus) == 5183
    assert corpus["4983"][:2] == data.corpus["4983"]


def test_wikiqa_in_beir_layout_reads_back_identically(shared_data, tmp_path):
    wikiqa = load_evaluation("wikiqa", "test", shared_data)
    directory = tmp_path / "wikiqa-beir"
    write_beir(wikiqa, directory)
    again = read_beir(directory, "test")
    assert again.corpus == wikiqa.corpus and again.queries == wikiqa.queries and again.qrels == wikiqa.qrels

    builder = prepare(tfds_builders.Beir(config="custom", data_dir=str(tmp_path / "tfds")), directory)
    corpus = records(builder, "corpus")
    assert {doc_id: (title, text) for doc_id, (title, text, _) in corpus.items()} == wikiqa.corpus
    queries = records(builder, "test")
    assert {query_id: text for query_id, (_, text, _) in queries.items()} == wikiqa.queries
    assert {query_id: relevant for query_id, (_, _, relevant) in queries.items()} == wikiqa.qrels


def test_reqa_squad_builds_offline_with_the_readers_counts(shared_data, tmp_path):
    # The whole dev file, and the first 8 articles of the training file (segmenting all
    # 442 takes minutes on a cold cache).
    manual = tmp_path / "manual"
    manual.mkdir()
    train = json.loads((shared_data / "squad" / "train-v1.1.reconstructed.json").read_text())
    train["data"] = train["data"][:8]
    (manual / "train-v1.1.json").write_text(json.dumps(train))
    (manual / "dev-v1.1.json").write_text((shared_data / "squad" / "dev-v1.1.json").read_text())

    builder = prepare(tfds_builders.ReqaSquad(data_dir=str(tmp_path / "tfds")), manual)
    pairs = reqa_training_pairs(manual / "train-v1.1.json")
    dev = reqa_evaluation(manual / "dev-v1.1.json")
    train_records = tfds.as_numpy(builder.as_dataset(split="train"))
    by_id = {r["id"].decode(): r for r in train_records}
    assert len(by_id) == len(pairs)
    for pair in pairs[:50]:
        record = by_id[pair.query_id]
        assert record["text"].decode() == pair.query and record["document"].decode() == pair.document
    assert {k: v[2] for k, v in records(builder, "dev").items()} == dev.qrels
    candidates = tfds.as_numpy(builder.as_dataset(split="dev_candidates"))
    assert sum(1 for _ in candidates) == len(dev.corpus) == 10264
