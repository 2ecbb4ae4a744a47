"""python -m samtone_tf.evaluate on a training model_dir and on its export: the same metrics."""

import json
import subprocess
import sys

import pytest

from samtone_tf.models import load_trained_model
from samtone_tf.serving import export
from tests.helpers import REPOSITORY_ROOT, command_in_process

MEASURES = ("P@1", "MRR@10", "nDCG@10", "Recall@10", "Recall@100")


def evaluate(model, out, *extra):
    """The command through its `main` in this process (test_missing_model_is_one_clear_error types it)."""
    result = command_in_process("samtone_tf.evaluate", "--model", model, "--dataset", "beir:medline", "--out", out, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(out.read_text())


@pytest.mark.slow
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


@pytest.mark.slow
def test_missing_model_is_one_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "samtone_tf.evaluate", "--model", str(tmp_path / "none"),
                             "--dataset", "wikiqa"], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "not a model_dir, a .keras file, an export directory or a pretrained checkpoint" in result.stderr


@pytest.mark.slow
def test_run_out_is_a_trec_run_that_standard_tools_score_alike(tmp_path, shared_data, tiny_model_dir):
    import pytrec_eval

    from samtone_tf.data.datasets import load_evaluation

    printed, result = evaluate(tiny_model_dir, tmp_path / "m.json", "--run_out", str(tmp_path / "medline.run"))
    assert "medline.run (TREC run)" in printed
    lines = (tmp_path / "medline.run").read_text().splitlines()
    first = lines[0].split()
    assert len(first) == 6 and first[1] == "Q0" and first[3] == "1"
    with open(tmp_path / "medline.run") as f:
        run = pytrec_eval.parse_run(f)
    qrels = load_evaluation("beir:medline", None, shared_data).qrels
    scored = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank", "P.10"}).evaluate(run)
    per_query = json.loads((tmp_path / "medline.run.per_query.json").read_text())
    judged = [q for q in per_query]
    assert len(judged) == 30
    for query_id in judged:
        assert per_query[query_id]["nDCG@10"] == pytest.approx(scored[query_id]["ndcg_cut_10"], abs=1e-4)
    mean_ndcg = sum(scored[q]["ndcg_cut_10"] for q in judged) / len(judged)
    assert result["metrics"]["nDCG@10"] == pytest.approx(mean_ndcg, abs=1e-4)
