"""ReQA from SQuAD JSON (v1.1 and v2.0): MultiReQA's SQuAD task.

Candidates are the sentences of every paragraph (pysbd segmentation); each keeps
its paragraph as context; identical sentences are merged into one candidate id. A
question's relevant candidates are the sentences holding its answers' start
offsets. Unanswerable SQuAD 2.0 questions are skipped. The train split gives
training pairs; a dev split gives an evaluation set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from samtone_tf.data.errors import DataError
from samtone_tf.data.records import RetrievalData, TrainingPair
from samtone_tf.data.sentences import (cached_sentence_spans, read_cached_spans, sentence_at, sentence_cache_file,
                                       sentence_spans, write_cached_spans)


@dataclass(frozen=True)
class SquadQuestion:
    question_id: str
    question: str
    answer_starts: tuple  # character offsets into the paragraph; empty when unanswerable


@dataclass(frozen=True)
class SquadParagraph:
    title: str
    index: int  # position of the paragraph in its article
    context: str
    questions: tuple


def read_squad(path):
    """Validated paragraphs of a SQuAD JSON file (v1.1 or v2.0), in file order.

    Errors name the file and the JSON path of the bad element (JSON has no useful
    line numbers once parsed), e.g. "data[3].paragraphs[0].qas[2]".
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(path, None, "is a directory; expected a SQuAD JSON file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    try:
        document = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(path, line, f"invalid UTF-8 at byte {error.start}") from None
    except json.JSONDecodeError as error:
        raise DataError(path, error.lineno, f"invalid JSON: {error.msg}") from None
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        raise DataError(path, None, "expected a SQuAD object with a 'data' list")
    paragraphs, seen_ids = [], {}
    for a, article in enumerate(articles):
        where = f"data[{a}]"
        title = _field(path, where, article, "title", str)
        for p, paragraph in enumerate(_field(path, where, article, "paragraphs", list)):
            where_p = f"{where}.paragraphs[{p}]"
            context = _field(path, where_p, paragraph, "context", str)
            if not context.strip():
                raise DataError(path, None, f"{where_p}: empty context")
            questions = []
            for q, qa in enumerate(_field(path, where_p, paragraph, "qas", list)):
                where_q = f"{where_p}.qas[{q}]"
                question_id = _field(path, where_q, qa, "id", str)
                question = _field(path, where_q, qa, "question", str)
                if not question.strip():
                    raise DataError(path, None, f"{where_q}: empty question")
                if question_id in seen_ids:
                    raise DataError(path, None, f"{where_q}: duplicate id {question_id!r} (first at {seen_ids[question_id]})")
                seen_ids[question_id] = where_q
                starts = []
                if not qa.get("is_impossible", False):
                    for n, answer in enumerate(_field(path, where_q, qa, "answers", list)):
                        where_a = f"{where_q}.answers[{n}]"
                        start = _field(path, where_a, answer, "answer_start", int)
                        text = _field(path, where_a, answer, "text", str)
                        if start < 0:
                            raise DataError(path, None, f"{where_a}: negative answer_start {start}")
                        if context[start : start + len(text)] != text:
                            raise DataError(
                                path, None,
                                f"{where_a}: answer {text[:40]!r} is not at answer_start {start} of the context",
                            )
                        starts.append(start)
                questions.append(SquadQuestion(question_id, question, tuple(starts)))
            paragraphs.append(SquadParagraph(title, p, context, tuple(questions)))
    return paragraphs


def squad_counts(paragraphs):
    """Articles, paragraphs, questions and answerable questions of parsed SQuAD."""
    return dict(
        articles=len({p.title for p in paragraphs}),
        paragraphs=len(paragraphs),
        questions=sum(len(p.questions) for p in paragraphs),
        answerable=sum(1 for p in paragraphs for q in p.questions if q.answer_starts),
    )


class ReqaBuilder:
    """Turns SQuAD paragraphs into ReQA candidates, merging identical sentences."""

    def __init__(self):
        self.sentences = {}  # candidate id -> sentence
        self.contexts = {}  # candidate id -> paragraph of its first occurrence
        self._ids_by_text = {}

    def candidates_of(self, paragraph, spans):
        """Candidate ids of a paragraph's sentences, given their spans."""
        ids = []
        for index, (start, end) in enumerate(spans):
            sentence = paragraph.context[start:end]
            candidate_id = self._ids_by_text.get(sentence)
            if candidate_id is None:
                candidate_id = f"{paragraph.title}/{paragraph.index}/{index}"
                self._ids_by_text[sentence] = candidate_id
                self.sentences[candidate_id] = sentence
                self.contexts[candidate_id] = paragraph.context
            ids.append(candidate_id)
        return ids


def _segmented(path):
    """(builder, [(paragraph, candidate ids, spans)]) for a SQuAD file."""
    paragraphs = read_squad(path)
    return _with_candidates(paragraphs, cached_sentence_spans([p.context for p in paragraphs], path))


def _with_candidates(paragraphs, all_spans):
    builder = ReqaBuilder()
    return builder, [(p, builder.candidates_of(p, spans), spans) for p, spans in zip(paragraphs, all_spans)]


def _segmented_lazily(path):
    """As `_segmented`, for reading a prefix: from the cache when the file's spans are cached, else segmenting
    paragraph by paragraph as they are consumed (and caching the spans once every paragraph has been)."""
    paragraphs = read_squad(path)
    cache_file = sentence_cache_file(path)
    cached = read_cached_spans(cache_file, len(paragraphs))
    if cached is not None:
        return _with_candidates(paragraphs, cached)
    builder = ReqaBuilder()

    def segmented():
        all_spans = []
        for paragraph in paragraphs:
            spans = sentence_spans(paragraph.context)
            all_spans.append(spans)
            yield paragraph, builder.candidates_of(paragraph, spans), spans
        write_cached_spans(cache_file, all_spans)  # a prefix longer than the file: the next read takes the cache

    return builder, segmented()


def reqa_evaluation(path, name="reqa:squad", split="dev"):
    """A SQuAD file as a ReQA evaluation set: answerable questions retrieve sentences."""
    builder, segmented = _segmented(path)
    queries, qrels = {}, {}
    for paragraph, ids, spans in segmented:
        for question in paragraph.questions:
            if not question.answer_starts:
                continue  # unanswerable (SQuAD 2.0): no sentence to retrieve
            queries[question.question_id] = question.question
            qrels[question.question_id] = {ids[sentence_at(spans, s)]: 1 for s in question.answer_starts}
    corpus = {cid: ("", sentence) for cid, sentence in builder.sentences.items()}
    return RetrievalData(name, split, corpus, queries, qrels, contexts=builder.contexts)


def reqa_training_pairs(path, max_pairs=None):
    """Training pairs (question, sentence of its first answer) from a SQuAD file.

    With `max_pairs`, the first pairs in file order, segmenting only the paragraphs
    they need (segmenting all of SQuAD train takes minutes the first time).
    """
    builder, segmented = _segmented_lazily(path) if max_pairs else _segmented(path)
    pairs = []
    for paragraph, ids, spans in segmented:
        if max_pairs and len(pairs) >= max_pairs:
            break
        for question in paragraph.questions:
            if not question.answer_starts or (max_pairs and len(pairs) >= max_pairs):
                continue
            candidate_id = ids[sentence_at(spans, question.answer_starts[0])]
            pairs.append(
                TrainingPair(question.question_id, question.question, candidate_id, builder.sentences[candidate_id])
            )
    return pairs


def _field(path, where, mapping, key, kind):
    if not isinstance(mapping, dict):
        raise DataError(path, None, f"{where}: expected an object, got {type(mapping).__name__}")
    if key not in mapping:
        raise DataError(path, None, f"{where}: missing field {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(path, None, f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value
