"""Sentence segmentation of paragraphs (pysbd, a rule-based segmenter with English rules
for abbreviations, decimals, quotes and brackets), with character spans."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def sentence_spans(paragraph):
    """[(start, end)] character spans of the sentences of `paragraph`, in order.

    Each span is stripped of surrounding whitespace; the spans cover every
    non-space character of the paragraph exactly once.
    """
    spans, cursor = [], 0
    for piece in _segmenter().segment(paragraph):
        sentence = piece.strip()
        if not sentence:
            continue
        start = paragraph.find(sentence, cursor)
        if start < 0:  # the segmenter never rewrites text with clean=False; be safe anyway
            raise RuntimeError(f"segmenter returned text not in the paragraph: {sentence[:60]!r}")
        spans.append((start, start + len(sentence)))
        cursor = start + len(sentence)
    return spans


def split_sentences(paragraph):
    """The sentences of `paragraph` as strings."""
    return [paragraph[start:end] for start, end in sentence_spans(paragraph)]


def sentence_at(spans, offset):
    """Index of the sentence holding character `offset`; an offset in the space between two
    sentences belongs to the next one."""
    for index, (_, end) in enumerate(spans):
        if offset < end:
            return index
    return len(spans) - 1
