"""The validated records every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RetrievalData:
    """An evaluation set: queries retrieve documents of a corpus, judged by qrels.

    corpus: {doc_id: (title, text)}; queries: {query_id: text}, the queries judged
    in this split; qrels: {query_id: {doc_id: grade}} (grade 0 = judged not
    relevant); contexts: for sentence-level sets (ReQA), {doc_id: paragraph}.
    """

    name: str
    split: str
    corpus: dict
    queries: dict
    qrels: dict
    contexts: dict | None = None
    notes: list = field(default_factory=list)  # warnings raised while reading, for reports

    def document_text(self, doc_id):
        """Title and text joined as BEIR does: "title text", stripped."""
        title, text = self.corpus[doc_id]
        return f"{title} {text}".strip()

    @property
    def document_ids(self):
        return list(self.corpus)

    def document_texts(self):
        return [self.document_text(doc_id) for doc_id in self.corpus]

    def counts(self):
        return dict(
            documents=len(self.corpus),
            queries=len(self.queries),
            judgements=sum(len(docs) for docs in self.qrels.values()),
        )


@dataclass(frozen=True)
class TrainingPair:
    """One training example: a query, its positive document, optional hard negatives (texts) and
    their document ids (where the data has them; otherwise `hard_negative_id` derives one from the
    text, as the readers do for positives without ids)."""

    query_id: str
    query: str
    document_id: str
    document: str
    hard_negatives: tuple = ()
    hard_negative_ids: tuple = ()

    def hard_negative_id(self, index):
        if self.hard_negative_ids:
            return self.hard_negative_ids[index]
        from samtone_tf.data.ids import text_id

        return text_id("d", self.hard_negatives[index])


class StreamedPairs:
    """Training pairs read afresh from their file on every pass (too many to hold in memory).

    `open_pairs` is a function returning a fresh iterator of `TrainingPair`.
    """

    def __init__(self, open_pairs, description):
        self._open_pairs = open_pairs
        self.description = description

    def __iter__(self):
        return iter(self._open_pairs())

    def __repr__(self):
        return f"StreamedPairs({self.description})"
