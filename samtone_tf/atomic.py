"""Writing files and directories so that readers never see them half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(target, overwrite=False, prefix=".incomplete-"):
    """Yields a hidden staging directory beside `target`; renames it to `target` on success.

    On an exception the staging directory is removed and `target` is untouched. An
    existing `target` is an error unless `overwrite`, in which case it is swapped out
    by two renames and then deleted.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{target.name}-", dir=target.parent))
    # mkdtemp makes the directory private (0700); a server running as another user must read it.
    os.chmod(staging, readable_mode(directory=True))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replaced = None
    if target.exists():
        replaced = target.with_name(f".replaced-{target.name}-{uuid.uuid4().hex}")
        os.rename(target, replaced)
    os.rename(staging, target)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def readable_mode(directory):
    """The mode the process's umask gives a new directory (or file), as mkdir (or open) would."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_text(path, text):
    """Writes `text` to `path` through a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
