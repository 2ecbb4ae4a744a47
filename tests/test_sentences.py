"""Sentence segmentation (pysbd) on the cases a regex gets wrong."""

import pytest

from samtone_tf.data.sentences import sentence_at, sentence_spans, split_sentences


@pytest.mark.parametrize(
    "paragraph,sentences",
    [
        ("Dr. Smith arrived at 5 p.m. on Jan. 5. He left early.",
         ["Dr. Smith arrived at 5 p.m. on Jan. 5.", "He left early."]),
        ("The U.S. Army paid $3.50 per unit, i.e. about 2.5% more. Prices rose.",
         ["The U.S. Army paid $3.50 per unit, i.e. about 2.5% more.", "Prices rose."]),
        ('"Is it good?" he asked. "Yes!" she said.', ['"Is it good?" he asked.', '"Yes!" she said.']),
        ("It was huge (see Fig. 3 and pp. 4-5). Then it shrank.",
         ["It was huge (see Fig. 3 and pp. 4-5).", "Then it shrank."]),
        ("Version 2.0 shipped in 1999. Version 3.1 followed.", ["Version 2.0 shipped in 1999.", "Version 3.1 followed."]),
    ],
)
def test_abbreviations_decimals_quotes_and_brackets(paragraph, sentences):
    assert split_sentences(paragraph) == sentences


def test_spans_index_the_paragraph_and_offsets_map_to_sentences():
    paragraph = "  First one.   Second one.  "
    spans = sentence_spans(paragraph)
    assert [paragraph[s:e] for s, e in spans] == ["First one.", "Second one."]
    assert sentence_at(spans, paragraph.index("one.")) == 0
    assert sentence_at(spans, paragraph.index("Second")) == 1
    assert sentence_at(spans, paragraph.index("Second") - 1) == 1  # the space before belongs to the next
