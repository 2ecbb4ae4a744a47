"""Who may write into, replace or delete a directory: only samtone_tf, and only a directory of the kind it writes.

Every directory samtone_tf writes (a training model_dir, an export, an index, embeddings, an evaluation folder)
carries a small marker file, `.samtone_tf.json`: {"kind": ..., "samtone_tf_version": ...}. Nothing is replaced or
deleted unless it carries the marker of the kind being written; a directory holding anything else is refused with
one line naming what is there. Directories written before markers existed are recognised by their own records
(an export's manifest, an embeddings manifest, an index manifest, a run's config.json) and marked then.

Paths go through `tf.io.gfile`, so an embeddings directory may be a bucket (gs://...).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from samtone_tf.version import __version__

MARKER = ".samtone_tf.json"
LOCK = ".lock"  # training.run_dir.RunLock's file
KINDS = ("model_dir", "export", "index", "embeddings", "evaluation", "sentence-transformers model")


class NotOurs(ValueError):
    """A directory that samtone_tf did not write as the kind asked for: never written into, replaced or deleted."""


def _a(kind):
    """'an export', 'a model_dir', 'embeddings': a kind with its article, for messages."""
    if kind == "embeddings":
        return kind
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def read_marker(directory):
    """The marker of `directory` ({"kind", "samtone_tf_version"}), or None when it has none (or an unreadable one)."""
    path = tf.io.gfile.join(str(directory), MARKER)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            marker = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("kind") in KINDS else None


def write_marker(directory, kind):
    path = tf.io.gfile.join(str(directory), MARKER)
    staging = f"{path}.tmp"
    with tf.io.gfile.GFile(staging, "w") as f:
        f.write(json.dumps({"kind": kind, "samtone_tf_version": __version__}) + "\n")
    tf.io.gfile.rename(staging, path, overwrite=True)


def describe_contents(directory, limit=4):
    """'a, b, c and 5 more': what a directory holds, for a refusal."""
    names = sorted(tf.io.gfile.listdir(str(directory)))
    names = [name.rstrip("/") for name in names]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def claim(directory, kind, recognise=None):
    """Makes `directory` a samtone_tf directory of `kind` to write into: creates it, or takes it when it is empty,
    carries the marker of `kind`, or (written before markers) `recognise(directory)` says it is one; marks it.

    Raises NotOurs (one line naming what is there) for a directory of another kind or of anything else, and for a
    path that is a file."""
    directory = str(directory)
    marker = check_ours(directory, kind, recognise)
    if marker is not None:
        return marker
    if not tf.io.gfile.exists(directory):
        tf.io.gfile.makedirs(directory)
    write_marker(directory, kind)
    return read_marker(directory)


def check_ours(directory, kind, recognise=None):
    """Raises NotOurs unless `directory` may be written (or replaced) as `kind`: it is absent or empty, carries the
    marker of `kind`, or `recognise(directory)` says it is one written before markers. -> its marker, or None."""
    directory = str(directory)
    if not tf.io.gfile.exists(directory):
        return None
    if not tf.io.gfile.isdir(directory):
        raise NotOurs(f"{directory} is a file, not a directory: refusing to write {_a(kind)} there")
    marker = read_marker(directory)
    if marker is not None:
        if marker["kind"] != kind:
            raise NotOurs(f"{directory} holds a samtone_tf {marker['kind']}, not {_a(kind)}: refusing to write "
                          f"{_a(kind)} into it; choose another directory")
        return marker
    # A lone lock file is ours too (a run or export killed before it wrote anything else): the lock takes it over.
    contents = [name for name in tf.io.gfile.listdir(directory) if name.rstrip("/") not in (MARKER, LOCK)]
    if contents and not (recognise is not None and recognise(directory)):
        raise NotOurs(f"{directory} is not empty and holds no samtone_tf {kind} (it holds "
                      f"{describe_contents(directory)}): refusing to write into it; choose an empty or new directory")
    return None


def require_owned(directory, kind):
    """Raises NotOurs unless `directory` carries the marker of `kind` (before anything in it is deleted)."""
    marker = read_marker(directory)
    if marker is None or marker["kind"] != kind:
        what = "no samtone_tf marker" if marker is None else f"the marker of {_a(marker['kind'])}"
        raise NotOurs(f"{directory} carries {what}, not that of {_a(kind)}: refusing to replace or delete it")


def holds(outer, inner):
    """Whether path `inner` is `outer` or lies inside it (local paths resolved, symlinks followed)."""
    if "://" in str(outer) or "://" in str(inner):
        outer, inner = str(outer).rstrip("/"), str(inner).rstrip("/")
        return inner == outer or inner.startswith(outer + "/")
    outer, inner = os.path.realpath(outer), os.path.realpath(inner)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def refuse_input_as_output(out, inputs, option="--out"):
    """Raises NotOurs when `out` is, or holds, one of `inputs` ({flag: path}): the command would overwrite (or,
    with --overwrite, delete) what it reads."""
    for flag, path in inputs.items():
        if path and holds(out, path):
            raise NotOurs(f"{option} {out} is (or holds) {flag} {path}, an input of this command: refusing to write "
                          f"over what it reads; choose another {option}")
