"""Helpers shared by the tests, importable without side effects (conftest.py splits the CPU into logical
devices when pytest loads it; importing this module changes nothing)."""

import signal
import subprocess

import tensorflow as tf

from samtone_tf.locations import REPOSITORY_ROOT

FIXTURES = REPOSITORY_ROOT / "tests" / "fixtures"
LOGICAL_CPUS = 4

WORDS = "the cat dog sat on mat who what where when is was of and to in".split()  # whole words of TINY_VOCABULARY
TINY_VOCABULARY = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list(".,!?'-")
    + list("abcdefghijklmnopqrstuvwxyz")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    + WORDS
    + ["##ed", "##ing"]
)

_strategies_made = 0


def mirrored_strategy(replicas):
    """A MirroredStrategy over `replicas` logical CPUs, safe to make many of in one process.

    Strategies in one process share collective group keys; a group first used with
    2 devices then joined by 4 aborts. TensorFlow's own tests set the
    `_collective_key_base` class attribute to keep them apart; so do we.
    """
    global _strategies_made
    _strategies_made += 1
    tf.distribute.MirroredStrategy._collective_key_base = 10_000 * _strategies_made
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def varied_length_pairs(count=32, hard_negatives=0):
    """`count` training pairs whose queries (2-10 words), documents (3-15 words) and `hard_negatives` hard
    negatives (2-12 words) vary in length, each side in another order."""
    from samtone_tf.data.records import TrainingPair

    return [TrainingPair(f"q{i}", " ".join(WORDS[: 2 + i % 9]), f"d{i}", " ".join(WORDS[: 3 + (i * 5) % 13]),
                         tuple(" ".join(WORDS[: 2 + (i * 7 + k * 3) % 11]) for k in range(hard_negatives)))
            for i in range(count)]


def free_ports(count):
    """`count` TCP ports free on 127.0.0.1 (for local multi-worker clusters)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def assert_dropout_replayed(model, x, output):
    """Restoring the model's dropout seed states replays its masks: `model(x, training=True)[output]` equals the
    first call's exactly, while a call without the restore differs (so dropout is on and the check can fail)."""
    import numpy as np

    from samtone_tf.training.gradient_cache import seed_states

    seeds = seed_states(model)
    snapshot = [tf.identity(v.value) for v in seeds]
    first = model(x, training=True)[output].numpy()
    different = model(x, training=True)[output].numpy()
    for variable, value in zip(seeds, snapshot):
        variable.assign(value)
    np.testing.assert_array_equal(model(x, training=True)[output].numpy(), first)
    assert not np.allclose(different, first)


def stop_signals_as_in_a_terminal():
    """For `preexec_fn`: a child's SIGINT and SIGTERM back to their defaults, as a user's shell gives them. A test
    suite started in the background by a script (no job control) inherits SIGINT ignored, and `train` rightly keeps
    an ignored signal ignored, so an interrupt sent to the child would be lost (one was, in a CI run started that
    way: the run trained on until the timeout)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def command_in_process(module, *args):
    """`python -m <module> ARGS` (a samtone_tf command) through the command's own `main` in this process: its parser, code path,
    exit status and printed lines, without a fresh interpreter's TensorFlow start-up (~6 s). -> a
    subprocess.CompletedProcess (stdout and stderr as text). For a promise about processes (a lock held by the test
    process, signals, a race, the environment or working directory of a user's shell), start the command instead."""
    import contextlib
    import importlib
    import io
    import warnings

    try:
        entry = importlib.import_module(f"{module}.__main__")
    except ModuleNotFoundError as error:
        if error.name != f"{module}.__main__":
            raise
        entry = importlib.import_module(module)
    stdout, stderr = io.StringIO(), io.StringIO()

    def show(message, category, filename, lineno, file=None, line=None):  # Python's default display, on stderr
        stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
        warnings.simplefilter("default")  # a fresh interpreter's filter: each warning shown once where raised
        warnings.showwarning = show
        try:
            code = entry.main([str(a) for a in args])
        except SystemExit as exit_info:  # argparse's refusals, and commands that exit rather than return
            code = exit_info.code
    if isinstance(code, str):  # sys.exit("message"): Python prints it and exits 1
        stderr.write(code + "\n")
        code = 1
    code = 0 if code is None else code
    return subprocess.CompletedProcess([module, *map(str, args)], code, stdout.getvalue(), stderr.getvalue())


class CommandInBackground:
    """A command started now and awaited later with `finish()` (a subprocess.CompletedProcess), its stdout and
    stderr going to files in `log_dir`: unread pipes would stall it on a full buffer while the test awaits
    another process, and so serialise commands meant to run side by side."""

    def __init__(self, args, log_dir, name, **popen):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(args, cwd=popen.pop("cwd", REPOSITORY_ROOT), stdout=stdout,
                                            stderr=stderr, **popen)

    def finish(self, timeout=600):
        self.process.wait(timeout=timeout)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode,
                                           self.stdout_path.read_text(), self.stderr_path.read_text())
