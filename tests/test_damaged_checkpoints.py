"""Resume restores what it says: a checkpoint of another model is refused, a damaged newest checkpoint
falls back to the previous one, a torn metrics.jsonl line is repaired."""

import json
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.helpers import REPOSITORY_ROOT


def command(model_dir, *extra):
    return [sys.executable, "-m", "samtone_tf.train", "--model", "tiny", "--model_dir", str(model_dir),
            "--eval_datasets", "", "--batch_size", "8", "--checkpoint_every", "2", "--log_every", "2",
            "--no-export", *extra]


def run(args):
    return subprocess.run(args, cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run(command(model_dir, "--steps", "4"))
    assert result.returncode == 0, result.stderr[-2000:]
    return model_dir


@pytest.fixture
def trained(trained_once, tmp_path):
    """A copy of one 4-step run (checkpoints at steps 2 and 4), for each test to damage as it likes."""
    model_dir = tmp_path / "run"
    shutil.copytree(trained_once, model_dir)
    return model_dir


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture_is_refused_not_silently_resumed(trained):
    # Even with config.json gone (so the settings cannot be compared), the restore itself is checked.
    (trained / "config.json").unlink()
    result = run(command(trained, "--steps", "6", "--architecture", "ade"))
    assert result.returncode == 2
    assert "does not match this model" in result.stderr and "resumed" not in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated data", "empty index", "missing data file"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(trained, damage):
    newest = trained / "checkpoints" / "ckpt-4"
    data = next(newest.parent.glob("ckpt-4.data-*"))
    if damage == "truncated data":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    elif damage == "empty index":
        newest.with_suffix(".index").write_bytes(b"")
    else:
        data.unlink()
    result = run(command(trained, "--steps", "6"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"checkpoint {newest} is damaged" in result.stderr
    assert f"resumed from {trained / 'checkpoints' / 'ckpt-2'} at step 2" in result.stdout
    assert tf.train.latest_checkpoint(str(trained / "checkpoints")).endswith("ckpt-6")


@pytest.mark.slow
def test_every_checkpoint_damaged_is_one_clear_error(trained):
    for index in (trained / "checkpoints").glob("ckpt-*.index"):
        index.write_bytes(b"")
    result = run(command(trained, "--steps", "6"))
    assert result.returncode == 2 and "every checkpoint in" in result.stderr and "is damaged" in result.stderr


@pytest.mark.slow
def test_a_torn_last_line_of_metrics_is_repaired(trained):
    metrics = trained / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5, "loss": 1.2')
    result = run(command(trained, "--steps", "6"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dropping its torn last line" in result.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_export_reads_a_torn_metrics_log_without_rewriting_it(tmp_path):
    from samtone_tf.export import last_evaluation

    metrics = tmp_path / "metrics.jsonl"
    text = ('{"step": 2, "evaluation": {"MRR": 0.25}}\n{"step": 4, "evaluation": {"MRR": 0.5}}\n'
            '{"step": 6, "evaluation": {"MRR": 0.')
    metrics.write_text(text)
    assert last_evaluation(tmp_path) == {"MRR": 0.5}
    assert metrics.read_text() == text  # the run's log is the run's to repair
    metrics.write_text('{"step": 2, "evaluation": {"MRR": 0.25}}\nnot json\n{"step": 4}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        last_evaluation(tmp_path)
    assert last_evaluation(tmp_path / "no run here") is None
