"""WikiQA TSV (Yang et al., 2015): questions retrieve their correct sentences from the
pool of all candidate sentences; questions without a correct sentence are skipped
(the standard evaluation). Columns are selected by header name, so the 7-column
official files and 5-column exports read alike."""

from __future__ import annotations

from samtone_tf.data.errors import DataError
from samtone_tf.data.records import RetrievalData, TrainingPair
from samtone_tf.data.textfiles import read_tsv_with_header

REQUIRED_COLUMNS = ("QuestionID", "Question", "SentenceID", "Sentence", "Label")


def read_wikiqa_rows(path):
    """Validated rows: (line, question_id, question, sentence_id, sentence, label)."""
    questions, sentences, labels = {}, {}, {}
    for number, row in read_tsv_with_header(path):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise DataError(path, 1, f"missing column(s) {', '.join(missing)} in the header")
        question_id, question = row["QuestionID"], row["Question"]
        sentence_id, sentence = row["SentenceID"], row["Sentence"]
        for key, value in (("QuestionID", question_id), ("Question", question),
                           ("SentenceID", sentence_id), ("Sentence", sentence)):
            if not value.strip():
                raise DataError(path, number, f"empty {key}")
        if row["Label"] not in ("0", "1"):
            raise DataError(path, number, f"Label must be 0 or 1, got {row['Label']!r}")
        if questions.setdefault(question_id, (question, number))[0] != question:
            raise DataError(path, number, f"QuestionID {question_id!r} has another question on line "
                                          f"{questions[question_id][1]}")
        if sentences.setdefault(sentence_id, (sentence, number))[0] != sentence:
            raise DataError(path, number, f"SentenceID {sentence_id!r} has another sentence on line "
                                          f"{sentences[sentence_id][1]}")
        label, first = labels.setdefault((question_id, sentence_id), (row["Label"], number))
        if label != row["Label"]:
            raise DataError(path, number, f"QuestionID {question_id!r} and SentenceID {sentence_id!r} are labelled "
                                          f"{row['Label']} here and {label} on line {first}")
        if first != number:
            continue  # the same row again: one judgement
        yield number, question_id, question, sentence_id, sentence, int(row["Label"])


def wikiqa_evaluation(path, name="wikiqa", split="test"):
    corpus, queries, qrels, all_questions = {}, {}, {}, set()
    for _, question_id, question, sentence_id, sentence, label in read_wikiqa_rows(path):
        corpus[sentence_id] = ("", sentence)
        all_questions.add(question_id)
        if label:
            queries[question_id] = question
            qrels.setdefault(question_id, {})[sentence_id] = 1
    notes = [f"{path}: {len(all_questions) - len(queries)} of {len(all_questions)} questions have no "
             "correct sentence (skipped)"]
    return RetrievalData(name, split, corpus, queries, qrels, notes=notes)


def wikiqa_training_pairs(path):
    return [
        TrainingPair(question_id, question, sentence_id, sentence)
        for _, question_id, question, sentence_id, sentence, label in read_wikiqa_rows(path)
        if label
    ]
