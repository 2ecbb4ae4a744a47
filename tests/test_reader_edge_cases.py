"""Readers agree with each other at the edges: long fields, byte order marks, duplicates, empty files,
directories, and a bad line deep in a streamed file (one error naming file and line, even mid-training)."""

import json
import subprocess
import sys

import pytest

from samtone_tf.data.beir import read_beir
from samtone_tf.data.errors import DataError
from samtone_tf.data.msmarco import iter_qrels, read_id_texts, read_msmarco
from samtone_tf.data.squad import read_squad
from samtone_tf.data.wikiqa import read_wikiqa_rows
from tests.helpers import REPOSITORY_ROOT
from tests.test_data_validation import GOOD_CORPUS, GOOD_QRELS, GOOD_QUERIES, write_beir

BOM = "\ufeff"


def write_msmarco(root, collection, queries=("q1\twho is one",), qrels=("q1 0 p1 1",)):
    root.mkdir(parents=True, exist_ok=True)
    (root / "collection.tsv").write_text("\n".join(collection) + "\n", encoding="utf-8")
    (root / "queries.dev.tsv").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (root / "qrels.dev.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return root


def test_a_field_longer_than_128_kib_reads(tmp_path):
    long_passage = "word " * 60_000  # 300 KB
    data = read_msmarco(write_msmarco(tmp_path / "m", [f"p1\t{long_passage}", "p2\tshort"]))
    assert data.corpus["p1"][1] == long_passage


def test_a_byte_order_mark_is_accepted_by_every_reader(tmp_path):
    data = read_msmarco(write_msmarco(tmp_path / "m", [BOM + "p1\tone", "p2\ttwo"], queries=[BOM + "q1\twho"]))
    assert set(data.corpus) == {"p1", "p2"} and set(data.queries) == {"q1"}
    beir = write_beir(tmp_path / "b", corpus=[BOM + GOOD_CORPUS[0], *GOOD_CORPUS[1:]],
                      queries=[BOM + GOOD_QUERIES[0], *GOOD_QUERIES[1:]], qrels=[BOM + GOOD_QRELS[0], *GOOD_QRELS[1:]])
    assert read_beir(beir).counts() == dict(documents=2, queries=2, judgements=2)
    squad = tmp_path / "squad.json"
    squad.write_text(BOM + json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "Paris is big.", "qas": [
        {"id": "a", "question": "what is big", "answers": [{"text": "Paris", "answer_start": 0}]}]}]}]}),
        encoding="utf-8")
    assert len(read_squad(squad)) == 1


def test_duplicate_msmarco_judgements_are_an_error_as_in_beir(tmp_path):
    path = tmp_path / "qrels.dev.tsv"
    path.write_text("q1 0 p1 1\nq2 0 p2 1\nq1 0 p1 0\n")
    with pytest.raises(DataError, match=r"qrels.dev.tsv:3: duplicate judgement of 'q1' / 'p1' \(first on line 1\)"):
        list(iter_qrels(path))


def test_a_negative_answer_start_is_an_error(tmp_path):
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "Paris is big. Paris", "qas": [
        {"id": "a", "question": "what", "answers": [{"text": "Paris", "answer_start": -5}]}]}]}]}))
    with pytest.raises(DataError, match=r"answers\[0\]: negative answer_start -5"):
        read_squad(squad)


def test_wikiqa_conflicting_labels_are_an_error_and_repeats_count_once(tmp_path):
    header = "QuestionID\tQuestion\tDocumentID\tDocumentTitle\tSentenceID\tSentence\tLabel"
    row = "Q1\twho\tD1\tT\tD1-0\tA sentence.\t{}"
    path = tmp_path / "WikiQA-test.tsv"
    path.write_text("\n".join([header, row.format(1), row.format(1)]) + "\n")
    assert len(list(read_wikiqa_rows(path))) == 1
    path.write_text("\n".join([header, row.format(1), row.format(0)]) + "\n")
    with pytest.raises(DataError, match=r"WikiQA-test.tsv:3: .*labelled 0 here and 1 on line 2"):
        list(read_wikiqa_rows(path))


@pytest.mark.slow
def test_empty_files_are_errors_when_read_not_later(tmp_path):
    with pytest.raises(DataError, match=r"corpus.jsonl: no documents"):
        read_beir(write_beir(tmp_path / "b", corpus=[""]))
    with pytest.raises(DataError, match=r"queries.jsonl: no queries"):
        read_beir(write_beir(tmp_path / "c", queries=[""]))
    with pytest.raises(DataError, match=r"collection.tsv: no entries"):
        read_id_texts(write_msmarco(tmp_path / "m", [""]) / "collection.tsv")
    result = subprocess.run([sys.executable, "-m", "samtone_tf.data", "stats", f"beir:{tmp_path / 'b'}"],
                            cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "corpus.jsonl: no documents" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_directory_where_a_file_is_expected_is_one_clear_error(tmp_path):
    root = write_beir(tmp_path / "b")
    (root / "corpus.jsonl").unlink()
    (root / "corpus.jsonl").mkdir()
    with pytest.raises(DataError, match=r"corpus.jsonl: is a directory; expected a file"):
        read_beir(root)
    (tmp_path / "squad.json").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        read_squad(tmp_path / "squad.json")


@pytest.mark.slow
def test_a_bad_line_deep_in_a_streamed_triples_file_stops_training_with_its_file_and_line(tmp_path):
    root = tmp_path / "marco"
    write_msmarco(root, ["p1\tone", "p2\ttwo"])
    lines = [f"query {i}\tpositive passage {i}\tnegative passage {i}" for i in range(300)]
    lines[250] = "a query without its passages"
    (root / "triples.train.small.tsv").write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "samtone_tf.train", "--model", "tiny", "--dataset", f"msmarco:{root}",
         "--model_dir", str(tmp_path / "run"), "--eval_datasets", "", "--steps", "40", "--batch_size", "8",
         "--hard_negatives", "1", "--max_train_pairs", "0", "--no-export", "--no-unique_ids"],
        cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "triples.train.small.tsv:251: expected 3 tab-separated fields, found 1" in result.stderr
    assert "Traceback" not in result.stderr and "InvalidArgumentError" not in result.stderr
