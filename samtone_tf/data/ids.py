"""Stable ids for texts that come without one (MS MARCO triples, FlagEmbedding JSONL)."""

import hashlib


def text_id(prefix, text):
    """A short id that is the same for the same text in every run and on every machine."""
    return f"{prefix}{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"
