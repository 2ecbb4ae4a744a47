"""BEIR-layout directories: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

Decisions for imperfect files (documented in the README):
- a document whose title and text are both empty is kept (official counts include
  such documents, e.g. two in Cranfield) and reported in one warning with the count;
  an empty query text is an error;
- judgements naming a query or document that does not exist are dropped and
  reported in one warning with their count (they could never be retrieved).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from samtone_tf.data.errors import DataError
from samtone_tf.data.records import RetrievalData, TrainingPair
from samtone_tf.data.textfiles import read_jsonl, read_tsv, require

QRELS_HEADER = ("query-id", "corpus-id", "score")


def read_corpus(path):
    """{doc_id: (title, text)} from a BEIR corpus.jsonl; also returns the ids of empty documents."""
    corpus, lines, empty = {}, {}, []
    for number, record in read_jsonl(path):
        doc_id, title, text = corpus_document(path, number, record)
        if doc_id in corpus:
            raise DataError(path, number, f"duplicate _id {doc_id!r} (first on line {lines[doc_id]})")
        if not (title.strip() or text.strip()):
            empty.append(doc_id)
        corpus[doc_id], lines[doc_id] = (title, text), number
    if not corpus:
        raise DataError(path, None, "no documents (the corpus is empty)")
    return corpus, empty


def corpus_document(path, number, record):
    """(doc_id, title, text) of one corpus.jsonl record, checked (title and text may be empty), or DataError."""
    doc_id = require(path, number, record, "_id")
    text = require(path, number, record, "text", allow_empty=True)
    title = record.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise DataError(path, number, f"field 'title' must be str, got {type(title).__name__}")
    return doc_id, title, text


def read_queries(path):
    """{query_id: text} from a BEIR queries.jsonl."""
    queries, lines = {}, {}
    for number, record in read_jsonl(path):
        query_id = require(path, number, record, "_id")
        text = require(path, number, record, "text")
        if query_id in queries:
            raise DataError(path, number, f"duplicate _id {query_id!r} (first on line {lines[query_id]})")
        queries[query_id], lines[query_id] = text, number
    if not queries:
        raise DataError(path, None, "no queries (the file is empty)")
    return queries


def read_qrels(path):
    """{query_id: {doc_id: grade}} from a BEIR qrels TSV with its header."""
    qrels = {}
    for number, (query_id, doc_id, score) in read_tsv(path, expected_fields=3, header=QRELS_HEADER):
        try:
            grade = int(score)
        except ValueError:
            raise DataError(path, number, f"score {score!r} is not an integer") from None
        if not query_id or not doc_id:
            raise DataError(path, number, "empty query-id or corpus-id")
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged:
            raise DataError(path, number, f"duplicate judgement of {query_id!r} / {doc_id!r}")
        judged[doc_id] = grade
    return qrels


def splits(directory):
    """The qrels splits present in a BEIR directory."""
    return sorted(p.stem for p in (Path(directory) / "qrels").glob("*.tsv"))


def read_beir(directory, split="test", name=None):
    """A BEIR directory's split as `RetrievalData` (queries restricted to the judged ones)."""
    directory = Path(directory)
    qrels_path = directory / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise DataError(qrels_path, None, f"no such split; available: {', '.join(splits(directory)) or 'none'}")
    corpus, empty = read_corpus(directory / "corpus.jsonl")
    all_queries = read_queries(directory / "queries.jsonl")
    qrels = read_qrels(qrels_path)
    notes = []
    if empty:
        notes.append(f"{directory / 'corpus.jsonl'}: {len(empty)} documents have an empty title and "
                     f"text (kept): {', '.join(empty[:5])}")
    qrels, dropped = _drop_unknown(qrels, all_queries, corpus)
    if dropped:
        notes.append(f"{qrels_path}: {dropped} judgements name unknown query or document ids (dropped)")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    if not queries:
        raise DataError(qrels_path, None, "no judgement names a known query and document: nothing to evaluate")
    return RetrievalData(name or directory.name, split, corpus, queries, qrels, notes=notes)


def read_beir_training_pairs(directory, split="train"):
    """Training pairs (query, relevant document) from a BEIR split's positive judgements."""
    data = read_beir(directory, split)
    pairs = []
    for query_id, judged in data.qrels.items():
        for doc_id, grade in judged.items():
            if grade > 0:
                pairs.append(TrainingPair(query_id, data.queries[query_id], doc_id, data.document_text(doc_id)))
    return pairs


def _drop_unknown(qrels, queries, corpus):
    kept, dropped = {}, 0
    for query_id, judged in qrels.items():
        if query_id not in queries:
            dropped += len(judged)
            continue
        known = {doc_id: grade for doc_id, grade in judged.items() if doc_id in corpus}
        dropped += len(judged) - len(known)
        if known:
            kept[query_id] = known
    return kept, dropped


def write_beir(data, directory):
    """Writes `RetrievalData` as a BEIR directory (corpus.jsonl, queries.jsonl,
    qrels/<split>.tsv), atomically: into a temporary sibling, then renamed."""
    import json

    from samtone_tf.atomic import atomic_directory

    with atomic_directory(directory) as staging:
        with open(staging / "corpus.jsonl", "w", encoding="utf-8") as f:
            for doc_id, (title, text) in data.corpus.items():
                f.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")
        with open(staging / "queries.jsonl", "w", encoding="utf-8") as f:
            for query_id, text in data.queries.items():
                f.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
        (staging / "qrels").mkdir()
        with open(staging / "qrels" / f"{data.split}.tsv", "w", encoding="utf-8") as f:
            f.write("\t".join(QRELS_HEADER) + "\n")
            for query_id, judged in data.qrels.items():
                for doc_id, grade in judged.items():
                    f.write(f"{query_id}\t{doc_id}\t{grade}\n")
