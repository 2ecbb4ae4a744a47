"""python -m samtone_tf.evaluate on a training model_dir and on its export: the same metrics."""

import json
import subprocess
import sys

import pytest

from samtone_tf.models import load_trained_model
from samtone_tf.serving import export
from tests.helpers import REPOSITORY_ROOT

MEASURES = ("P@1", "MRR@10", "nDCG@10", "Recall@10", "Recall@100")


def evaluate(model, out, *extra):
    result = subprocess.run(
        [sys.executable, "-m", "samtone_tf.evaluate", "--model", str(model), "--dataset", "beir:medline",
         "--out", str(out), *extra], cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(out.read_text())


def test_model_dir_and_export_evaluate_alike(tmp_path, shared_data, tiny_model_dir):
    model_dir = tiny_model_dir
    export(load_trained_model(model_dir), tmp_path / "export", verbose=False)

    printed, from_model = evaluate(model_dir, tmp_path / "model.json")
    assert "beir:medline (test): 30 queries, 1033 documents, exact search" in printed
    assert all(f"  {m}" in printed for m in MEASURES)
    _, from_export = evaluate(tmp_path / "export", tmp_path / "export.json")
    assert from_model["dataset"] == "beir:medline" and from_model["model"] == str(model_dir)
    for measure in MEASURES:
        assert from_export["metrics"][measure] == pytest.approx(from_model["metrics"][measure], abs=1e-6)
    _, with_scann = evaluate(model_dir, tmp_path / "scann.json", "--index", "scann")
    assert with_scann["index"] == "scann"
    assert with_scann["metrics"]["nDCG@10"] == pytest.approx(from_model["metrics"]["nDCG@10"], abs=1e-6)


def test_missing_model_is_one_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "samtone_tf.evaluate", "--model", str(tmp_path / "none"),
                             "--dataset", "wikiqa"], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "not a model_dir, a .keras file or an export directory" in result.stderr
