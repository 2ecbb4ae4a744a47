"""MultiReQA's official SQuAD candidates: candidates.jsonl(.gz) and questions.jsonl(.gz),
the release's sentence boundaries applied to SQuAD text. Gold = every sentence
holding an annotator's answer start."""

from __future__ import annotations

from pathlib import Path

from samtone_tf.data.errors import DataError
from samtone_tf.data.records import RetrievalData
from samtone_tf.data.textfiles import read_jsonl, require


def _find(directory, stem):
    for name in (f"{stem}.jsonl.gz", f"{stem}.jsonl"):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    raise DataError(Path(directory) / f"{stem}.jsonl.gz", None, "file not found")


def multireqa_evaluation(directory, name="multireqa:squad", split="dev", matching_paragraphs_only=False):
    """The official candidates and questions as `RetrievalData`.

    `matching_paragraphs_only` keeps the questions flagged
    `mrqa_question_count_matches_paragraph` (MultiReQA's own filtered set is close to it).
    """
    candidates_path, questions_path = _find(directory, "candidates"), _find(directory, "questions")
    corpus, lines = {}, {}
    for number, record in read_jsonl(candidates_path):
        candidate_id = require(candidates_path, number, record, "candidate_id")
        sentence = require(candidates_path, number, record, "sentence")
        if candidate_id in corpus:
            raise DataError(candidates_path, number, f"duplicate candidate_id (first on line {lines[candidate_id]})")
        corpus[candidate_id], lines[candidate_id] = ("", sentence), number
    queries, qrels = {}, {}
    for number, record in read_jsonl(questions_path):
        question_id = require(questions_path, number, record, "question_id")
        question = require(questions_path, number, record, "question")
        gold = require(questions_path, number, record, "gold_candidate_ids", kind=list)
        unknown = [g for g in gold if g not in corpus]
        if unknown or not gold:
            raise DataError(questions_path, number, f"gold_candidate_ids name unknown candidates: {unknown[:3]}"
                            if unknown else "no gold candidate")
        if matching_paragraphs_only and not record.get("mrqa_question_count_matches_paragraph", True):
            continue
        if question_id in queries:
            raise DataError(questions_path, number, f"duplicate question_id {question_id!r}")
        queries[question_id] = question
        qrels[question_id] = {g: 1 for g in gold}
    return RetrievalData(name, split, corpus, queries, qrels)
