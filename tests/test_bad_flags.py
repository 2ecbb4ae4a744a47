"""Every command validates its arguments and answers a user error with one line, never a traceback."""

import os
import subprocess
import sys

import pytest

from samtone_tf.model.towers import tiny_dual_encoder
from tests.helpers import REPOSITORY_ROOT, TINY_VOCABULARY, command_in_process


def run(*args):
    as_a_user = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                          timeout=300, env=as_a_user)


TRAIN_BAD_VALUES = [
    ("--checkpoint_every", "0", "must be at least 1; got 0"),
    ("--log_every", "0", "must be at least 1; got 0"),
    ("--batch_size", "-4", "must be at least 1; got -4"),
    ("--steps", "0", "must be at least 1; got 0"),
    ("--length_groups", "0", "must be at least 1; got 0"),
    ("--max_train_pairs", "-3", "must be at least 0; got -3"),
    ("--temperature", "0", "must be greater than 0.0; got 0.0"),
    ("--learning_rate", "nan", "must be finite"),
    ("--hard_negatives", "two", "not an integer: 'two'"),
]
OTHER_BAD_VALUES = [
    (("samtone_tf.export", "--model_dir", "x", "--out", "y", "--version", "0"), "argument --version: must be at least 1"),
    (("samtone_tf.export", "--model_dir", "x", "--out", "y", "--k", "-1"), "argument --k: must be at least 1"),
    (("samtone_tf.export", "--out", "y"), "pass --model_dir (or --model) and --out to export, or --check EXPORT_DIR"),
    (("samtone_tf.evaluate", "--model", "x", "--dataset", "wikiqa", "--k", "0"), "argument --k: must be at least 1"),
    (("samtone_tf.analyze", "--model", "x", "--dataset", "wikiqa", "--max_queries", "0"),
     "argument --max_queries: must be at least 1"),
]


# Argument checking runs before anything else a command does, so the process a user starts adds nothing to it but
# TensorFlow's start-up time: the cases run each command's own `main` in this process (command_in_process); one case
# per command below is typed as a user types it, in a fresh process.

@pytest.mark.parametrize("flag,value,message", TRAIN_BAD_VALUES)
def test_train_refuses_bad_values(tmp_path, flag, value, message):
    result = command_in_process("samtone_tf.train", "--model", "tiny", "--model_dir", tmp_path / "run", flag, value)
    assert result.returncode == 2
    assert f"argument {flag}: {message}" in result.stderr.strip().splitlines()[-1]  # the usage, then one line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,message", OTHER_BAD_VALUES)
def test_other_commands_refuse_bad_values(args, message):
    result = command_in_process(*args)
    assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [(("samtone_tf.train", "--model", "tiny", *TRAIN_BAD_VALUES[0][:2]),
                                           "argument --checkpoint_every: must be at least 1; got 0"),
                                          *OTHER_BAD_VALUES[2:4]], ids=["train", "export", "evaluate"])
def test_a_bad_value_typed_as_a_user_types_it_is_one_line_without_a_traceback(args, message, tmp_path):
    result = run(*args, *(["--model_dir", str(tmp_path / "run")] if args[0] == "samtone_tf.train" else []))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()
    # The other tests' in-process runs of a command (tests.helpers.command_in_process) print what the user sees.
    in_process = command_in_process(*args, *(["--model_dir", str(tmp_path / "run")] if args[0] == "samtone_tf.train"
                                              else []))
    assert (in_process.returncode, in_process.stdout) == (result.returncode, result.stdout)
    assert in_process.stderr.splitlines()[-1].partition("error:")[2] == result.stderr.splitlines()[-1].partition(
        "error:")[2]


@pytest.mark.slow
def test_a_truncated_keras_file_is_named_as_damaged(tmp_path):
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    model.save(tmp_path / "model.keras")
    data = (tmp_path / "model.keras").read_bytes()
    (tmp_path / "model.keras").write_bytes(data[: len(data) // 2])
    result = run("samtone_tf.evaluate", "--model", str(tmp_path / "model.keras"), "--dataset", "wikiqa")
    assert result.returncode == 2
    assert "model.keras: not a .keras archive (damaged or truncated" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_unwritable_destinations_are_one_error_line(tmp_path, tiny_model_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    trained = run("samtone_tf.train", "--model", "tiny", "--model_dir", str(blocker / "run"), "--eval_datasets", "",
                  "--steps", "1", "--batch_size", "4")
    assert trained.returncode == 2 and trained.stderr.startswith("error: ") and "Traceback" not in trained.stderr
    assert str(blocker) in trained.stderr
    exported = run("samtone_tf.export", "--model_dir", str(tiny_model_dir), "--out", str(blocker / "export"))
    assert exported.returncode == 2 and exported.stderr.startswith("error: ") and "Traceback" not in exported.stderr
