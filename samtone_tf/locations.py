"""Where the shared benchmark data and pretrained checkpoints are found.

A flag wins, then an environment variable, then `shared/<kind>` in the working directory or the
nearest of its parents that has one (so `../shared/<kind>` beside a checkout is found from the
checkout or anywhere inside it, whether the package is installed editable or not), then
`../shared/<kind>` beside the directory the package was installed from in editable mode.
"""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

_ENVIRONMENT = {"data": "SAMTONE_DATA", "models": "SAMTONE_MODELS"}


def shared_dir(kind, flag=None):
    """The directory of `kind` ("data" or "models"): flag, then $SAMTONE_<KIND>, then ../shared/<kind>.

    Raises FileNotFoundError naming every place looked at when none exists.
    """
    if kind not in _ENVIRONMENT:
        raise ValueError(f"kind must be one of {sorted(_ENVIRONMENT)}; got {kind!r}")
    variable = _ENVIRONMENT[kind]
    candidates = []
    if flag:
        candidates.append((Path(flag), "the flag"))
    elif os.environ.get(variable):
        candidates.append((Path(os.environ[variable]), f"${variable}"))
    else:
        here = Path.cwd().resolve()
        for directory in (here, *here.parents):
            candidates.append((directory / "shared" / kind, "the working directory or a parent"))
        candidates.append((REPOSITORY_ROOT.parent / "shared" / kind, "beside the package's checkout"))
    for path, source in candidates:
        if path.is_dir():
            return path
    if len(candidates) > 2:
        candidates = [(Path.cwd() / "shared" / kind, "the working directory and its parents"), candidates[-1]]
    looked = ", ".join(f"{path} ({source})" for path, source in candidates)
    raise FileNotFoundError(
        f"no {kind} directory: looked at {looked}; pass --{kind}_dir or set ${variable}"
    )


def data_dir(flag=None):
    return shared_dir("data", flag)


def models_dir(flag=None):
    return shared_dir("models", flag)


def file_inside(directory, name, what="file"):
    """The path of `name`, a file a manifest of `directory` names, checked to stay inside it: a plain name (no
    absolute path, no `..`, no separator) that, symlinks followed, resolves under `directory`. Raises ValueError
    naming the directory and the name otherwise (a crafted or hand-edited manifest, a symlink leaving it)."""
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or os.path.isabs(text) or "\0" in text:
        raise ValueError(f"{directory}: the {what} {text!r} is not a plain file name of the directory")
    path = Path(directory) / text
    if "://" in str(directory):
        return str(directory).rstrip("/") + "/" + text
    if not is_inside(path, directory):
        raise ValueError(f"{directory}: the {what} {text!r} leads outside the directory (a symlink to "
                         f"{os.path.realpath(path)})")
    return path


def is_inside(path, directory):
    """Whether `path` (symlinks followed) is `directory` or lies under it."""
    path, directory = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return path == directory or directory in path.parents
