"""python -m samtone_tf.data stats."""

import pytest
import json
import subprocess
import sys

from samtone_tf.data.__main__ import main
from tests.helpers import REPOSITORY_ROOT


def test_stats_prints_and_writes_counts(shared_data, tmp_path, capsys):
    out = tmp_path / "stats.json"
    assert main(["stats", "beir:scifact", "--data_dir", str(shared_data), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test | evaluation | 5183 | 300 | 339" in printed
    numbers = json.loads(out.read_text())
    assert numbers["splits"]["train"]["queries"] == 809
    assert numbers["splits"]["test"]["mean_query_words"] > 5


def test_stats_of_training_splits(shared_data, capsys):
    assert main(["stats", "wikiqa", "--data_dir", str(shared_data)]) == 0
    printed = capsys.readouterr().out
    assert "train | training |" in printed and "| 1040 |" in printed
    assert "test | evaluation | 5961 | 243 | 293" in printed


def test_bad_dataset_is_one_clear_error(capsys):
    assert main(["stats", "nope:x"]) == 2
    assert "unknown dataset 'nope:x'" in capsys.readouterr().err


@pytest.mark.slow
def test_help_documents_the_dataset_names():
    result = subprocess.run([sys.executable, "-m", "samtone_tf.data", "--help"], capture_output=True, text=True,
                            cwd=REPOSITORY_ROOT, timeout=120)
    assert result.returncode == 0
    for name in ("reqa:squad", "beir:<name or dir>", "msmarco:<dir>", "wikiqa", "flagembedding:<file>"):
        assert name in result.stdout
