"""MS MARCO passage files, streamed line by line (the full collection is 8.8M passages).

collection.tsv: pid<TAB>passage; queries.<split>.tsv: qid<TAB>query;
qrels.<split>.tsv: TREC format "qid 0 pid grade" (tabs or spaces);
triples*.tsv: query<TAB>positive<TAB>negative (no ids: ids are derived from the text).
"""

from __future__ import annotations

from pathlib import Path

from samtone_tf.data.errors import DataError
from samtone_tf.data.ids import text_id
from samtone_tf.data.records import RetrievalData, StreamedPairs, TrainingPair
from samtone_tf.data.textfiles import read_lines, read_tsv


def iter_id_texts(path):
    """Yields (line, id, text) from a two-column id<TAB>text file, checking each line."""
    for number, fields in read_tsv(path, expected_fields=2):
        yield number, *id_text(path, number, fields)


def id_text(path, number, fields):
    """(id, text) of one line's two fields, checked: neither may be empty (DataError)."""
    item_id, text = fields
    if not item_id.strip():
        raise DataError(path, number, "empty id")
    if not text.strip():
        raise DataError(path, number, f"empty text for id {item_id!r}")
    return item_id, text


def read_id_texts(path, keep=None):
    """{id: text} of a two-column file (only ids in `keep`, when given); duplicate ids are errors."""
    texts, lines = {}, {}
    for number, item_id, text in iter_id_texts(path):
        if item_id in lines:
            raise DataError(path, number, f"duplicate id {item_id!r} (first on line {lines[item_id]})")
        lines[item_id] = number
        if keep is None or item_id in keep:
            texts[item_id] = text
    if not lines:
        raise DataError(path, None, "no entries (the file is empty)")
    return texts


def iter_qrels(path):
    """Yields (qid, pid, grade) from a TREC qrels file; a pair judged twice is an error (as in BEIR)."""
    seen = {}
    for number, text in read_lines(path):
        if not text.strip():
            continue
        fields = text.split()
        if len(fields) != 4:
            raise DataError(path, number, f"expected 4 fields (qid 0 pid grade), found {len(fields)}")
        try:
            grade = int(fields[3])
        except ValueError:
            raise DataError(path, number, f"grade {fields[3]!r} is not an integer") from None
        first = seen.setdefault((fields[0], fields[2]), number)
        if first != number:
            raise DataError(path, number, f"duplicate judgement of {fields[0]!r} / {fields[2]!r} (first on line "
                                          f"{first})")
        yield fields[0], fields[2], grade


def iter_triples(path):
    """Yields TrainingPair(query, positive, hard_negatives=(negative,)) from a triples file."""
    for _, (query, positive, negative) in read_tsv(path, expected_fields=3):
        yield TrainingPair(text_id("q", query), query, text_id("d", positive), positive, (negative,))


def find_triples(directory):
    found = sorted(Path(directory).glob("triples*.tsv"))
    return found[0] if found else None


def read_msmarco(directory, split="dev", name=None):
    """Queries and qrels of a split, with the whole collection as corpus.

    The whole collection is kept in memory (about 3 GB for the full 8.8M passages);
    queries without a judgement are skipped.
    """
    directory = Path(directory)
    qrels = {}
    for qid, pid, grade in iter_qrels(directory / f"qrels.{split}.tsv"):
        qrels.setdefault(qid, {})[pid] = grade
    queries = read_id_texts(directory / f"queries.{split}.tsv", keep=qrels)
    corpus = {pid: ("", text) for pid, text in read_id_texts(directory / "collection.tsv").items()}
    unknown = sum(1 for qid, judged in qrels.items() for pid in judged if pid not in corpus or qid not in queries)
    notes = [f"{directory}: {unknown} judgements name unknown ids (dropped)"] if unknown else []
    qrels = {qid: {pid: g for pid, g in judged.items() if pid in corpus}
             for qid, judged in qrels.items() if qid in queries}
    return RetrievalData(name or f"msmarco:{directory.name}", split, corpus, queries, qrels, notes=notes)


def msmarco_training_pairs(directory, split="train"):
    """Training pairs: the triples file when present (one hard negative each, streamed
    on every pass: `StreamedPairs`), else the positive judgements of qrels.<split>.tsv
    with passages looked up while streaming the collection (only the judged passages
    are kept in memory)."""
    directory = Path(directory)
    triples = find_triples(directory)
    if triples is not None:
        return StreamedPairs(lambda: iter_triples(triples), str(triples))
    positives = [(qid, pid) for qid, pid, grade in iter_qrels(directory / f"qrels.{split}.tsv") if grade > 0]
    wanted_queries = {qid for qid, _ in positives}
    wanted_passages = {pid for _, pid in positives}
    queries = read_id_texts(directory / f"queries.{split}.tsv", keep=wanted_queries)
    passages = read_id_texts(directory / "collection.tsv", keep=wanted_passages)
    return [TrainingPair(qid, queries[qid], pid, passages[pid]) for qid, pid in positives
            if qid in queries and pid in passages]
