"""Where the shared benchmark data and pretrained checkpoints are found.

A flag wins, then an environment variable, then `../shared/<kind>` beside the
repository root (the layout of a development checkout).
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
        candidates.append((REPOSITORY_ROOT.parent / "shared" / kind, "the default ../shared"))
    for path, source in candidates:
        if path.is_dir():
            return path
    looked = ", ".join(f"{path} ({source})" for path, source in candidates)
    raise FileNotFoundError(
        f"no {kind} directory: looked at {looked}; pass --{kind}_dir or set ${variable}"
    )


def data_dir(flag=None):
    return shared_dir("data", flag)


def models_dir(flag=None):
    return shared_dir("models", flag)
