"""Sentence segmentation of paragraphs (pysbd, a rule-based segmenter with English rules
for abbreviations, decimals, quotes and brackets), with character spans."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from samtone_tf.atomic import atomic_write_text

SEGMENTER_VERSION = "pysbd-0.3.4-en-1"  # part of the cache key: change it when segmentation changes


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


def cache_dir():
    """Where derived data is cached: $SAMTONE_CACHE, else ~/.cache/samtone_tf."""
    return Path(os.environ.get("SAMTONE_CACHE") or Path.home() / ".cache" / "samtone_tf")


def cached_sentence_spans(paragraphs, source_path):
    """sentence_spans of every paragraph, cached on disk by the source file's content.

    Segmenting SQuAD train takes minutes; the cache file is named by a hash of the
    source bytes and the segmenter version, and written atomically.
    """
    cache_file = sentence_cache_file(source_path)
    spans = read_cached_spans(cache_file, len(paragraphs))
    if spans is None:
        spans = [sentence_spans(paragraph) for paragraph in paragraphs]
        write_cached_spans(cache_file, spans)
    return spans


def sentence_cache_file(source_path):
    """Where the sentence spans of `source_path` are cached: named by a hash of its bytes (read once here, so a
    caller that reads and then writes the cache passes this path to both)."""
    digest = hashlib.sha256(Path(source_path).read_bytes()).hexdigest()[:24]
    return cache_dir() / f"sentences-{SEGMENTER_VERSION}-{digest}.json"


def read_cached_spans(cache_file, count):
    """The sentence spans of `count` paragraphs cached at `cache_file` (`sentence_cache_file`), or None (no cache,
    or a damaged one, which is then recomputed)."""
    if cache_file.is_file():
        try:
            spans = json.loads(cache_file.read_text())
            if len(spans) == count:
                return [[tuple(span) for span in spans_of] for spans_of in spans]
        except (OSError, ValueError):
            pass
    return None


def write_cached_spans(cache_file, spans):
    """Caches the sentence spans of every paragraph at `cache_file` (an optimisation only: errors are ignored)."""
    try:
        atomic_write_text(cache_file, json.dumps(spans))
    except OSError:
        pass
