"""Bad input files get one error naming the file, the line and the problem."""

import gzip
import json
import warnings

import pytest

from samtone_tf.data.beir import read_beir
from samtone_tf.data.errors import DataError
from samtone_tf.data.flagembedding import flagembedding_training_pairs
from samtone_tf.data.msmarco import iter_qrels, read_id_texts
from samtone_tf.data.multireqa import multireqa_evaluation
from samtone_tf.data.squad import read_squad
from samtone_tf.data.wikiqa import wikiqa_evaluation

GOOD_CORPUS = ['{"_id": "d1", "title": "T", "text": "one"}', '{"_id": "d2", "title": "", "text": "two"}']
GOOD_QUERIES = ['{"_id": "q1", "text": "what one"}', '{"_id": "q2", "text": "what two"}']
GOOD_QRELS = ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\t1"]


def write_beir(root, corpus=GOOD_CORPUS, queries=GOOD_QUERIES, qrels=GOOD_QRELS):
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return root


def test_good_beir_directory_reads(tmp_path):
    data = read_beir(write_beir(tmp_path))
    assert data.counts() == dict(documents=2, queries=2, judgements=2)


@pytest.mark.parametrize(
    "file,lines,message",
    [
        ("corpus", [GOOD_CORPUS[0], '{"_id": "d2", "text": "tw'], r"corpus.jsonl:2: invalid JSON"),
        ("corpus", [GOOD_CORPUS[0], '{"title": "x", "text": "two"}'], r"corpus.jsonl:2: missing field '_id'"),
        ("corpus", [GOOD_CORPUS[0], '{"_id": "d2", "title": "x"}'], r"corpus.jsonl:2: missing field 'text'"),
        ("corpus", [GOOD_CORPUS[0], '{"_id": "d1", "text": "again"}'],
         r"corpus.jsonl:2: duplicate _id 'd1' \(first on line 1\)"),
        ("corpus", [GOOD_CORPUS[0], '["d2", "two"]'], r"corpus.jsonl:2: expected a JSON object"),
        ("queries", [GOOD_QUERIES[0], '{"_id": "q2", "text": "  "}'], r"queries.jsonl:2: field 'text' is empty"),
        ("queries", [GOOD_QUERIES[0], '{"_id": "q2", "text": 7}'], r"queries.jsonl:2: field 'text' must be str"),
        ("queries", [GOOD_QUERIES[0], GOOD_QUERIES[0]], r"queries.jsonl:2: duplicate _id 'q1'"),
        ("qrels", [GOOD_QRELS[0], "q1\td1"], r"test.tsv:2: expected 3 tab-separated fields, found 2"),
        ("qrels", [GOOD_QRELS[0], "q1\td1\t1\textra"], r"test.tsv:2: expected 3 tab-separated fields, found 4"),
        ("qrels", [GOOD_QRELS[0], "q1\td1\thigh"], r"test.tsv:2: score 'high' is not an integer"),
        ("qrels", [GOOD_QRELS[0], "q1\td1\t1", "q1\td1\t2"], r"test.tsv:3: duplicate judgement"),
        ("qrels", ["qid\tdid\tscore", "q1\td1\t1"], r"test.tsv:1: expected the header"),
    ],
)
def test_beir_errors_name_file_line_and_problem(tmp_path, file, lines, message):
    files = dict(corpus=GOOD_CORPUS, queries=GOOD_QUERIES, qrels=GOOD_QRELS)
    files[file] = lines
    write_beir(tmp_path, **files)
    with pytest.raises(DataError, match=message):
        read_beir(tmp_path)


def test_non_utf8_bytes_are_reported_with_their_line(tmp_path):
    write_beir(tmp_path)
    (tmp_path / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": "one"}\n{"_id": "d2", "text": "t\xffo"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2: invalid UTF-8 at byte 24"):
        read_beir(tmp_path)


def test_unknown_ids_in_qrels_are_dropped_with_their_count(tmp_path):
    write_beir(tmp_path, qrels=GOOD_QRELS + ["q1\tnope\t1", "q9\td1\t1", "q2\tgone\t1"])
    with pytest.warns(UserWarning, match=r"test.tsv: 3 judgements name unknown query or document ids \(dropped\)"):
        data = read_beir(tmp_path)
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}


def test_missing_split_lists_the_available_ones(tmp_path):
    write_beir(tmp_path)
    with pytest.raises(DataError, match="no such split; available: test"):
        read_beir(tmp_path, split="train")


def test_empty_documents_are_kept_and_counted(tmp_path):
    write_beir(tmp_path, corpus=GOOD_CORPUS + ['{"_id": "d3", "title": " ", "text": ""}'])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_beir(tmp_path)
    assert "d3" in data.corpus
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        "1 documents have an empty title and text (kept): d3"
    ]


WIKIQA_HEADER = "QuestionID\tQuestion\tSentenceID\tSentence\tLabel"


@pytest.mark.parametrize(
    "lines,message",
    [
        ([WIKIQA_HEADER, "Q1\tq?\tD1-0\tA sentence\t2"], r"WikiQA.tsv:2: Label must be 0 or 1, got '2'"),
        ([WIKIQA_HEADER, "Q1\tq?\tD1-0\t\t1"], r"WikiQA.tsv:2: empty Sentence"),
        ([WIKIQA_HEADER, "Q1\tq?\tD1-0"], r"WikiQA.tsv:2: expected 5 tab-separated fields, found 3"),
        (["QuestionID\tQuestion\tSentence\tLabel", "Q1\tq?\tS\t1"], r"WikiQA.tsv:1: missing column\(s\) SentenceID"),
        ([WIKIQA_HEADER, "Q1\tq?\tD1-0\tA\t1", "Q1\tq?\tD1-0\tB\t0"],
         r"WikiQA.tsv:3: SentenceID 'D1-0' has another sentence on line 2"),
    ],
)
def test_wikiqa_errors(tmp_path, lines, message):
    path = tmp_path / "WikiQA.tsv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        wikiqa_evaluation(path)


def squad_file(tmp_path, qa):
    document = {"data": [{"title": "T", "paragraphs": [{"context": "Paris is big. It is in France.", "qas": [qa]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    "qa,message",
    [
        ({"id": "a", "question": "Where?", "answers": [{"text": "Germany", "answer_start": 20}]},
         r"data\[0\].paragraphs\[0\].qas\[0\].answers\[0\]: answer 'Germany' is not at answer_start 20"),
        ({"id": "a", "question": "", "answers": []}, r"qas\[0\]: empty question"),
        ({"question": "Where?", "answers": []}, r"qas\[0\]: missing field 'id'"),
        ({"id": "a", "question": "Where?", "answers": [{"text": "France", "answer_start": "23"}]},
         r"answers\[0\].answer_start: expected int, got str"),
    ],
)
def test_squad_errors_name_the_json_path(tmp_path, qa, message):
    with pytest.raises(DataError, match=message):
        read_squad(squad_file(tmp_path, qa))


def test_squad_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text('{"data": [\n  {"title": "T",\n   "paragraphs": [}\n]}')
    with pytest.raises(DataError, match=r"squad.json:3: invalid JSON"):
        read_squad(path)


def test_msmarco_errors(tmp_path):
    qrels = tmp_path / "qrels.dev.tsv"
    qrels.write_text("1 0 7 1\n2 0 8\n")
    with pytest.raises(DataError, match=r"qrels.dev.tsv:2: expected 4 fields \(qid 0 pid grade\), found 3"):
        list(iter_qrels(qrels))
    collection = tmp_path / "collection.tsv"
    collection.write_text("7\tfirst passage\n8\t \n")
    with pytest.raises(DataError, match=r"collection.tsv:2: empty text for id '8'"):
        read_id_texts(collection)
    collection.write_text("7\tfirst passage\n7\tagain\n")
    with pytest.raises(DataError, match=r"collection.tsv:2: duplicate id '7' \(first on line 1\)"):
        read_id_texts(collection)
    collection.write_bytes(b"7\tfirst passage\n8\ta carriage\rreturn inside\n")
    with pytest.raises(DataError, match=r"collection.tsv:2: not a tab-separated line"):
        read_id_texts(collection)


def test_flagembedding_errors(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n{"query": "q2", "pos": [], "neg": []}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: field 'pos' is empty"):
        flagembedding_training_pairs(path)
    path.write_text('{"query": "q", "pos": ["p"], "neg": ["n", ""]}\n')
    with pytest.raises(DataError, match=r"train.jsonl:1: neg\[1\] is an empty text"):
        flagembedding_training_pairs(path)


def test_multireqa_gold_must_name_a_candidate(tmp_path):
    with gzip.open(tmp_path / "candidates.jsonl.gz", "wt") as f:
        f.write(json.dumps({"candidate_id": "c1", "sentence": "A sentence."}) + "\n")
    with gzip.open(tmp_path / "questions.jsonl.gz", "wt") as f:
        f.write(json.dumps({"question_id": "q1", "question": "Q?", "gold_candidate_ids": ["c1"]}) + "\n")
        f.write(json.dumps({"question_id": "q2", "question": "Q?", "gold_candidate_ids": ["c9"]}) + "\n")
    with pytest.raises(DataError, match=r"questions.jsonl.gz:2: gold_candidate_ids name unknown candidates"):
        multireqa_evaluation(tmp_path)
