"""What every command line shares: argument types that refuse bad values, help that shows every
default, and TensorFlow's native log noise kept off the user's terminal."""

from __future__ import annotations

import argparse
import atexit
import os
import re
import sys
import threading

from samtone_tf.options import CODE_PRECISIONS, COMPUTE_DTYPES, USER_SET_TF_LOG_LEVEL


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and shows each option's default (unless its help already
    says what the default is)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.nargs == 0 and action.default in (False, None):
            return f"{text} (default: off)".strip()
        return f"{text} (default: %(default)s)".strip()


def _number(kind, minimum, strict):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be finite; got {text}")
        if (strict and value <= minimum) or (not strict and value < minimum):
            bound = f"greater than {minimum}" if strict else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}; got {value}")
        return value
    return parse


positive_int = _number(int, 1, strict=False)
non_negative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0.0, strict=True)
non_negative_float = _number(float, 0.0, strict=False)


def comma_list(item):
    """An argparse type: "a,b,c" -> [item(a), item(b), item(c)], each checked by `item` (e.g. positive_int)."""
    def parse(text):
        parts = [part.strip() for part in text.split(",")]
        if not text.strip() or any(not part for part in parts):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list; got {text!r}")
        return [item(part) for part in parts]
    return parse


def add_compute_dtype(parser):
    parser.add_argument("--compute_dtype", default="float32", choices=COMPUTE_DTYPES,
                        help="the network's math when encoding: bfloat16 on CPUs with native bf16 (avx512_bf16, "
                             "AMX) and accelerators; weights stay float32, embeddings float32 and L2-normalised")


def add_code_options(parser, scope=""):
    """--dims, --precision and --rescore: a corpus searched as cheaper codes (`index.quantized`); `scope` prefixes
    their help (e.g. "with --corpus: ")."""
    parser.add_argument("--dims", type=positive_int, default=None,
                        help=f"{scope}search a prefix of the embeddings, re-normalised (train for it with "
                             "--matryoshka_dims; default: every dimension)")
    parser.add_argument("--precision", default="float32", choices=CODE_PRECISIONS,
                        help=f"{scope}the corpus's codes: float32, int8 (per-dimension ranges calibrated on the "
                             "corpus: 4x smaller) or binary (signs, Hamming distance: 32x smaller)")
    parser.add_argument("--rescore", type=positive_int, default=None, metavar="K",
                        help=f"{scope}shortlist K documents per query by the codes, then rank them by the float32 "
                             "prefix (default: rank by the codes)")


def add_verbose(parser):
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's native log messages (hidden unless TF_CPP_MIN_LOG_LEVEL is set)")


# TensorFlow's and absl's C++ log lines: "2026-01-01 00:00:00.0: E tensorflow/...", "W0000 00:00:...",
# and absl's notice about log messages before its initialisation.
_NATIVE_LOG = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\]"
                         rb"|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
                         rb"|WARNING: All log messages before absl::InitializeLog\(\))")
_filter = None


def quiet_native_logs(verbose=False):
    """Hides TensorFlow's C++ log lines (CUDA probing, oneDNN, grappler, absl) from stderr, keeping
    every other line, unless `verbose` or the user set TF_CPP_MIN_LOG_LEVEL themselves."""
    global _filter
    if verbose:
        if not USER_SET_TF_LOG_LEVEL:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    if USER_SET_TF_LOG_LEVEL or _filter is not None:
        return
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:  # no usable file descriptor 2: nothing to filter
        return

    def forward():
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not _NATIVE_LOG.match(line))
                if kept:
                    os.write(original, kept)
            if pending and not _NATIVE_LOG.match(pending):
                os.write(original, pending)

    thread = threading.Thread(target=forward, name="samtone-stderr-filter", daemon=True)
    thread.start()
    _filter = (original, thread)

    def restore():
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the thread drains and stops
        thread.join(timeout=5)

    atexit.register(restore)


def fail(message, code=2):
    """Prints one error line (no traceback) and returns the exit code. `message` may be an exception: a
    TensorFlow error (a full disk under a SavedModel or checkpoint write, an unreadable bucket) shows its kind and
    its first line only."""
    import tensorflow as tf

    if isinstance(message, tf.errors.OpError):
        first = (message.message or "").strip().splitlines()
        message = f"{type(message).__name__}: {first[0] if first else message}"
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def command_errors():
    """What a command reports with one line instead of a traceback: bad input and files (OSError, ValueError, a
    full disk included) and TensorFlow's errors reading or writing files."""
    import tensorflow as tf

    return (OSError, ValueError, tf.errors.OpError)
