"""The in-graph WordPiece tokenizer against the reference tokenisation of the same vocabulary."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.model.text import WordPieceTokenizer


def real_sentences(data_dir, limit_per_source=150):
    """A few hundred real texts of several kinds from ../shared/data."""
    texts = []
    with open(data_dir / "wikiqa" / "WikiQA-test.tsv", encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        texts += [row["Sentence"] for _, row in zip(range(limit_per_source), rows)]
    squad = json.loads((data_dir / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
    paragraphs = [p for article in squad["data"] for p in article["paragraphs"]]
    texts += [p["context"] for p in paragraphs[:limit_per_source]]
    texts += [q["question"] for p in paragraphs[:40] for q in p["qas"]][:limit_per_source]
    for corpus in ("msmarco/trec-dl-2019-pool", "beir/scifact", "classic/npl"):
        with open(data_dir / corpus / "corpus.jsonl", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(limit_per_source), f)]
    return texts


def test_ids_match_the_reference_tokenizer_on_real_sentences(shared_data, default_checkpoint):
    from tokenizers import Tokenizer  # Hugging Face's Rust tokenizer (a keras-hub dependency)

    reference = Tokenizer.from_file(str(default_checkpoint / "tokenizer.json"))
    reference.no_truncation()
    reference.no_padding()
    texts = real_sentences(shared_data)
    # MS MARCO's mojibake (controls, no-break spaces, accents) is in there on purpose.
    assert len(texts) >= 700 and any("\xa0" in t or "\x80" in t for t in texts)
    tokenizer = WordPieceTokenizer(default_checkpoint / "vocab.txt", max_length=512)
    ours = tokenizer.tokenize(tf.constant(texts)).to_list()
    mismatched = [t for t, ids in zip(texts, ours) if ids != reference.encode(t).ids[1:-1]]
    assert mismatched == []


def test_packed_ids_match_the_stored_reference_ids(default_checkpoint):
    rows = [json.loads(line) for line in open(default_checkpoint / "reference_embeddings.jsonl")]
    tokenizer = WordPieceTokenizer(default_checkpoint / "vocab.txt", max_length=256)
    out = tokenizer(tf.constant([row["text"] for row in rows]))
    ids, mask = out["token_ids"].numpy(), out["padding_mask"].numpy()
    assert ids.dtype == np.int32 and mask.dtype == bool
    # Edge cases included: the empty string, one character, accents, a text over 256 tokens.
    assert {"", "a"} <= {row["text"] for row in rows}
    assert max(len(row["token_ids"]) for row in rows) == 256
    for row, row_ids, row_mask in zip(rows, ids, mask):
        assert row_ids[row_mask].tolist() == row["token_ids"]


def test_truncation_packing_and_padding(tiny_vocabulary):
    tokenizer = WordPieceTokenizer(tiny_vocabulary, max_length=6)
    vocab = tiny_vocabulary.read_text().split("\n")
    ids = {token: i for i, token in enumerate(vocab)}
    out = tokenizer(tf.constant(["the cat sat on the mat", "dogs", ""]))
    cls, sep, pad = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]
    assert out["token_ids"].numpy().tolist() == [
        [cls, ids["the"], ids["cat"], ids["sat"], ids["on"], sep],
        [cls, ids["dog"], ids["##s"], sep, pad, pad],
        [cls, sep, pad, pad, pad, pad],
    ]
    assert out["padding_mask"].numpy().sum(axis=1).tolist() == [6, 4, 2]


def test_batches_pad_to_their_longest_text_or_to_max_length(tiny_vocabulary):
    dynamic = WordPieceTokenizer(tiny_vocabulary, max_length=32)
    static = WordPieceTokenizer(tiny_vocabulary, max_length=32, pad_to_max_length=True)
    texts = tf.constant(["the cat", "a"])
    assert dynamic(texts)["token_ids"].shape == (2, 4)
    assert static(texts)["token_ids"].shape == (2, 32)
    np.testing.assert_array_equal(static(texts)["token_ids"][:, :4], dynamic(texts)["token_ids"])


def test_lowercase_and_accents_follow_the_checkpoint(tiny_vocabulary):
    cased = WordPieceTokenizer(tiny_vocabulary, lowercase=False)
    uncased = WordPieceTokenizer(tiny_vocabulary, lowercase=True)
    unk = tiny_vocabulary.read_text().split("\n").index("[UNK]")
    assert uncased.tokenize(tf.constant(["THE Cät"])).to_list() == uncased.tokenize(
        tf.constant(["the cat"])
    ).to_list()
    assert cased.tokenize(tf.constant(["THE"])).to_list() == [[unk]]


def test_vocabulary_travels_with_a_saved_model_as_an_asset(tiny_vocabulary, tmp_path):
    tokenizer = WordPieceTokenizer(tiny_vocabulary, max_length=16)
    module = tf.Module()
    module.tokenizer = tokenizer
    module.tokenize = tf.function(
        lambda texts: tokenizer(texts)["token_ids"], input_signature=[tf.TensorSpec([None], tf.string)]
    )
    export = tmp_path / "saved"
    tf.saved_model.save(module, str(export))
    tiny_vocabulary.unlink()  # the export must not depend on the original file
    assert (export / "assets" / "vocab.txt").is_file()
    loaded = tf.saved_model.load(str(export))
    texts = tf.constant(["the cat sat", "who is it?"])
    np.testing.assert_array_equal(loaded.tokenize(texts), tokenizer(texts)["token_ids"])


def test_vocabulary_given_as_a_list_equals_the_file(tiny_vocabulary):
    tokens = tiny_vocabulary.read_text().split("\n")[:-1]
    texts = tf.constant(["the dogs sat", "mat?"])
    np.testing.assert_array_equal(
        WordPieceTokenizer(tokens)(texts)["token_ids"], WordPieceTokenizer(tiny_vocabulary)(texts)["token_ids"]
    )


def test_bad_vocabulary_and_inputs_are_rejected(tmp_path):
    missing_sep = tmp_path / "vocab.txt"
    missing_sep.write_text("[PAD]\n[UNK]\n[CLS]\nthe\n")
    with pytest.raises(ValueError, match=r"vocab.txt: the sep_token '\[SEP\]' is missing"):
        WordPieceTokenizer(missing_sep)
    with pytest.raises(ValueError, match="not unique"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "the"])
    with pytest.raises(ValueError, match="max_length"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], max_length=1)
    tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the"])
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        tokenizer(tf.constant([["the"]]))
