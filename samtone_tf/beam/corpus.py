"""A corpus as Apache Beam sources: documents read in parallel, without loading the corpus whole, and the
documents that cannot be read sent to a dead-letter output naming file, line and reason.

Line formats (`LINE_FORMATS`): BEIR `corpus.jsonl` ({"_id", "title", "text"}; a document is "title text", stripped,
as `RetrievalData.document_text` joins it) and two-column `id<TAB>text` files (MS MARCO `collection.tsv`). Files are
split by byte ranges, so one large file is read by many workers; a line is reported by its byte offset while the
pipeline runs, and the dead letters' line numbers are counted afterwards, one pass per file that has any (they are
rare, and a worker reading from the middle of a file cannot know its line number).

Elements: a document is `(doc_id, text)`; a dead letter is `{"file", "line", "reason"}`.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io import filebasedsource
from apache_beam.io.filesystems import FileSystems

from samtone_tf.data.beir import corpus_document
from samtone_tf.data.errors import DataError
from samtone_tf.data.msmarco import id_text
from samtone_tf.data.textfiles import BOM as TEXT_BOM
from samtone_tf.data.textfiles import json_object, tsv_fields

DEAD_LETTER = "dead_letter"
BOM = TEXT_BOM.encode("utf-8")


def parse_beir_line(file_name, line):
    """A BEIR corpus.jsonl line (str) -> (doc_id, text), checked as `data.beir.read_corpus` checks it, and a
    document without text (title and text empty) refused too: DataError otherwise."""
    doc_id, title, text = corpus_document(file_name, None, json_object(file_name, None, line))
    joined = f"{title} {text}".strip()
    if not joined:
        raise DataError(file_name, None, f"empty text (title and text) for id {doc_id!r}")
    return doc_id, joined


def parse_id_text_line(file_name, line):
    """An `id<TAB>text` line -> (doc_id, text), checked as `data.msmarco.read_id_texts` checks it."""
    return id_text(file_name, None, tsv_fields(file_name, None, line, expected_fields=2))


LINE_FORMATS = {"beir": parse_beir_line, "id_text": parse_id_text_line}


class LineSource(filebasedsource.FileBasedSource):
    """Lines of text files as (file, byte offset, raw line), split by byte ranges across workers.

    A range owns the lines that start inside it; a reader starting mid-file skips to the first line start, as
    Beam's own text source does. Gzip files are read whole by one worker (they cannot be split).
    """

    def read_records(self, file_name, offset_range_tracker):
        start = offset_range_tracker.start_position()
        with self.open_file(file_name) as f:
            position = start
            if start > 0:
                f.seek(start - 1)
                skipped = f.readline()  # the rest of the line that began before this range
                position = start - 1 + len(skipped)
            while offset_range_tracker.try_claim(position):
                raw = f.readline()
                if not raw:
                    break
                yield file_name, position, raw
                position += len(raw)


class ParseLines(beam.DoFn):
    """(file, offset, raw line) -> (doc_id, (file, offset, text)), or to DEAD_LETTER {"file", "offset", "reason"}."""

    def __init__(self, parse):
        self.parse = parse

    def process(self, element):
        file_name, offset, raw = element
        if offset == 0 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.strip():
                return []  # blank lines are skipped, as every reader of the package skips them
            doc_id, text = self.parse(file_name, line)
        except UnicodeDecodeError as error:
            reason = f"invalid UTF-8 at byte {error.start}"
        except DataError as error:
            reason = error.problem
        else:
            return [(doc_id, (file_name, offset, text))]
        return [beam.pvalue.TaggedOutput(DEAD_LETTER, {"file": file_name, "offset": offset, "reason": reason})]


class KeepFirstOfEachId(beam.DoFn):
    """(doc_id, [(file, offset, text), ...]) -> (doc_id, text) of the first occurrence; the others to DEAD_LETTER.

    Grouping by id also redistributes the documents, so the encoding that follows runs on every worker.
    """

    def process(self, element):
        doc_id, occurrences = element
        first, *others = sorted(occurrences, key=lambda o: (o[0], o[1]))
        for file_name, offset, _ in others:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {
                "file": file_name, "offset": offset,
                "reason": f"duplicate id {doc_id!r} (kept the one at byte {first[1]} of {first[0]})"})
        yield doc_id, first[2]


def line_numbers(file_name, dead_letters):
    """Dead letters of one file with "offset" replaced by its 1-based "line", in one pass over the file."""
    wanted = sorted(dead_letters, key=lambda d: d["offset"])
    resolved, line, position, index = [], 1, 0, 0
    with FileSystems.open(file_name) as f:
        while index < len(wanted):
            chunk = f.read(1 << 20)
            while index < len(wanted) and (not chunk or wanted[index]["offset"] < position + len(chunk)):
                offset = wanted[index]["offset"]
                line_here = line + chunk.count(b"\n", 0, max(offset - position, 0))
                entry = {k: v for k, v in wanted[index].items() if k != "offset"}
                resolved.append(dict(entry, line=line_here))
                index += 1
            if not chunk:
                break
            line += chunk.count(b"\n")
            position += len(chunk)
    return resolved


class ReadCorpus(beam.PTransform):
    """Files of one line format -> documents (doc_id, text), each id once; `.dead_letters` after expansion."""

    def __init__(self, patterns, line_format):
        super().__init__()
        if line_format not in LINE_FORMATS:
            raise ValueError(f"unknown corpus line format {line_format!r}; known: {', '.join(LINE_FORMATS)}")
        self.patterns, self.line_format = list(patterns), line_format
        self.dead_letters = None

    def expand(self, pipeline):
        sources = [pipeline | f"Read {i}" >> beam.io.Read(LineSource(pattern))
                   for i, pattern in enumerate(self.patterns)]
        lines = tuple(sources) | "Lines" >> beam.Flatten()
        parsed = lines | "Parse" >> beam.ParDo(ParseLines(LINE_FORMATS[self.line_format])).with_outputs(
            DEAD_LETTER, main="documents")
        unique = (parsed.documents
                  | "Group by id" >> beam.GroupByKey()
                  | "Keep first" >> beam.ParDo(KeepFirstOfEachId()).with_outputs(DEAD_LETTER, main="documents"))
        self.dead_letters = ((parsed[DEAD_LETTER], unique[DEAD_LETTER]) | "All dead letters" >> beam.Flatten()
                             | "By file" >> beam.Map(lambda d: (d["file"], d))
                             | "Group by file" >> beam.GroupByKey()
                             | "Line numbers" >> beam.FlatMap(lambda item: line_numbers(item[0], list(item[1]))))
        return unique.documents
