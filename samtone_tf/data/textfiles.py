"""Line-by-line reading of UTF-8 text files (JSONL, TSV) with file:line errors."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

from samtone_tf.data.errors import DataError

# csv's default field limit (128 KiB) rejects long passages; a line is bounded by memory anyway.
csv.field_size_limit(2**31 - 1)
BOM = "\ufeff"


def open_text(path):
    """Opens a text file as bytes (gzip if the name ends in .gz); lines are decoded one by one."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, None, "is a directory; expected a file")
    if not path.is_file():
        raise DataError(path, None, "file not found")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_lines(path):
    """Yields (line_number, text) for every line, without its line ending.

    A UTF-8 byte order mark at the start of the file is accepted and dropped (every reader treats it
    alike); non-UTF-8 bytes are reported with the line and byte offset.
    """
    with open_text(path) as f:
        try:
            for number, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(
                        path, number,
                        f"invalid UTF-8 at byte {error.start} of the line ({raw[error.start:error.start + 4]!r})",
                    ) from None
                if number == 1 and text.startswith(BOM):
                    text = text[1:]
                yield number, text.rstrip("\r\n")
        except (OSError, EOFError) as error:  # a truncated or damaged .gz
            raise DataError(path, None, f"cannot be read to the end ({type(error).__name__}: {error})") from None


def read_jsonl(path):
    """Yields (line_number, object) for every non-blank line of a JSON Lines file."""
    for number, text in read_lines(path):
        if not text.strip():
            continue
        yield number, json_object(path, number, text)


def json_object(path, number, text):
    """The JSON object on line `number` of `path` (one line's text), or DataError."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, number, f"invalid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(value, dict):
        raise DataError(path, number, f"expected a JSON object, got {type(value).__name__}")
    return value


def read_tsv(path, expected_fields=None, header=None):
    """Yields (line_number, fields) for every non-blank line of a tab-separated file.

    `header`: None (no header), or the tuple of column names the first line must
    hold (it is checked and skipped). Quotes are not special (QUOTE_NONE):
    text fields hold quote characters.
    """
    lines = read_lines(path)
    if header is not None:
        first = next(lines, None)
        if first is None:
            raise DataError(path, 1, f"empty file; expected the header {' '.join(header)!r}")
        number, text = first
        found = tuple(text.split("\t"))
        if found != tuple(header):
            raise DataError(path, number, f"expected the header {'<TAB>'.join(header)!r}, found {text!r}")
    for number, text in lines:
        if not text.strip():
            continue
        yield number, tsv_fields(path, number, text, expected_fields)


def tsv_fields(path, number, text, expected_fields=None):
    """The tab-separated fields of line `number` of `path` (one line's text), checked for their count."""
    try:
        fields = next(csv.reader([text], delimiter="\t", quoting=csv.QUOTE_NONE))
    except csv.Error as error:  # a carriage return or NUL inside the line
        raise DataError(path, number, f"not a tab-separated line ({error})") from None
    if expected_fields is not None and len(fields) != expected_fields:
        raise DataError(path, number, f"expected {expected_fields} tab-separated fields, found {len(fields)}")
    return fields


def read_tsv_with_header(path):
    """Yields (line_number, {column: value}) for a TSV file whose first line names the columns."""
    lines = read_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(path, 1, "empty file; expected a header line")
    _, header_text = first
    columns = header_text.split("\t")
    for number, text in lines:
        if not text.strip():
            continue
        yield number, dict(zip(columns, tsv_fields(path, number, text, len(columns))))


def require(path, number, record, key, kind=str, allow_empty=False):
    """record[key], checked: present, of `kind`, and (for text) not empty."""
    if key not in record:
        raise DataError(path, number, f"missing field {key!r}")
    value = record[key]
    if kind is str and isinstance(value, (int,)) and not isinstance(value, bool) and key.endswith("id"):
        value = str(value)  # numeric ids are common in JSONL exports
    if not isinstance(value, kind):
        raise DataError(path, number, f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    if kind is str and not allow_empty and not value.strip():
        raise DataError(path, number, f"field {key!r} is empty")
    return value
