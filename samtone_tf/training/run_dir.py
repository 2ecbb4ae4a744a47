"""A training model_dir kept consistent: one run at a time, a resume that restores what it says,
and a metrics log that survives a kill mid-write."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path


from samtone_tf.atomic import atomic_write_text

LOCK = ".lock"

# Settings a checkpoint is bound to: resuming with another value would train a different model
# (or fail to restore). Steps, logging, evaluation and export settings may change on resume.
BINDING_SETTINGS = ("model", "num_layers", "vocabulary", "architecture", "projection_dim", "pooling",
                    "query_max_length", "document_max_length", "same_tower", "bidirectional", "temperature",
                    "learnable_temperature", "hard_negatives", "batch_size", "optimizer", "dataset",
                    "train_split", "seed")


class RunLock:
    """An exclusive lock on a directory one process writes at a time (a training model_dir, an export):
    `directory/.lock` holds the owner's pid, host and start.

    A lock whose process no longer runs on this host (a killed run) is stale and taken over. `holder` names what
    holds it in the refusal ("run", "export"), `advice` says what to do instead.
    """

    def __init__(self, model_dir, say=print, holder="run", advice="use another --model_dir"):
        self.path = Path(model_dir) / LOCK
        self.say = say
        self.held = False
        self.holder, self.advice = holder, advice

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and self._alive(holder):
                    raise RunLockedError(
                        f"{self.path.parent} is in use by another {self.holder} (pid {holder['pid']} on "
                        f"{holder['host']}, started {holder.get('started', '?')}); wait for it, or {self.advice}. "
                        f"If that {self.holder} is gone, delete {self.path}")
                article = "an" if self.holder[0] in "aeiou" else "a"
                self.say(f"removing a stale lock of {article} {self.holder} that is no longer running: "
                         f"{self._describe(holder)}")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as f:
                json.dump(owner, f)
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}")

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        return False

    def _holder(self):
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
        except (OSError, ValueError):
            return None  # torn or unreadable: its writer died while writing it

    @staticmethod
    def _alive(holder):
        if holder.get("host") != socket.gethostname():
            return True  # cannot tell from here: assume it runs
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @staticmethod
    def _describe(holder):
        return "unreadable lock" if holder is None else f"pid {holder['pid']} on {holder['host']}"


class RunLockedError(RuntimeError):
    pass


def check_resumable(model_dir, config):
    """Raises ValueError naming every binding setting in which `config` differs from the run
    recorded in model_dir/config.json."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
    except ValueError:
        return  # a torn config.json is rewritten; the checkpoint restore check still guards the weights
    now = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    differences = [f"--{key} {recorded.get(key)!r} in the checkpoint, {now.get(key)!r} now"
                   for key in BINDING_SETTINGS if key in recorded and recorded.get(key) != now.get(key)]
    if differences:
        raise ValueError(f"{model_dir} holds checkpoints of a run with other settings: " + "; ".join(differences)
                         + ". Run with the same settings to resume, or use another --model_dir.")


def checkpoint_candidates(directory):
    """The checkpoints in `directory`, newest first (by the files present, not the state file,
    which a kill can leave stale or damaged)."""
    found = []
    for index in Path(directory).glob("ckpt-*.index"):
        match = re.fullmatch(r"ckpt-(\d+)\.index", index.name)
        if match:
            found.append((int(match.group(1)), str(index.with_suffix(""))))
    return [path for _, path in sorted(found, reverse=True)]


def restore_latest(checkpoint, directory, say=print):
    """Restores the newest usable checkpoint of `directory` into `checkpoint` and checks that every
    existing variable was matched. A damaged checkpoint (truncated data, empty index, missing file)
    is reported and the previous one tried. -> the restored path, or None when there is none.

    Raises ValueError when a checkpoint does not match the model (other settings) or none is usable.
    """
    candidates = checkpoint_candidates(directory)
    damaged = []
    for path in candidates:
        try:
            status = checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except AssertionError as error:
            raise ValueError(f"{path} does not match this model ({str(error).splitlines()[0][:300]}): it was "
                             "written with other settings. Use the same settings, or another --model_dir.") from None
        except Exception as error:  # noqa: BLE001  (TF reports damage as OpError, ValueError, IndexError...)
            problem = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            say(f"warning: checkpoint {path} is damaged ({problem}); trying the previous one")
            damaged.append(path)
            continue
        if damaged:
            say(f"resuming from {path} instead of the damaged {', '.join(damaged)}")
        return path
    if damaged:
        raise ValueError(f"every checkpoint in {directory} is damaged ({', '.join(damaged)}); delete them to "
                         "start over")
    return None


def read_jsonl_records(path, say=print, repair=True):
    """The records of a metrics log; a torn last line (a kill mid-write) is dropped (and, with `repair`, the
    file rewritten without it: a reader that does not own the run passes repair=False), a damaged line
    elsewhere is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                if repair:
                    say(f"repairing {path}: dropping its torn last line {number} (a run was killed while writing it)")
                    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
                break
            raise ValueError(f"{path}:{number}: not a JSON record; fix or delete the file") from None
    return records
