"""`export --corpus ... --dims D --precision int8|binary --rescore K`: a retriever SavedModel over cheaper codes,
in core TensorFlow ops, that ranks as `evaluate` with the same options does (index.quantized), under TF Serving's
TF1 loader and tf.saved_model.load; encoders with a dims_D signature; the manifest's record."""

import json
import subprocess
import sys

import numpy as np
import pytest

from samtone_tf import export as export_command
from samtone_tf.data.datasets import load_evaluation
from samtone_tf.index.quantized import QuantizedIndex
from samtone_tf.models import load_trained_model
from samtone_tf.serving import run_like_tf_serving, run_tf2, saved_model_op_types
from tests.helpers import REPOSITORY_ROOT

TEXTS = ["what causes cancer", "vitamin d deficiency", "0-dimensional biomaterials show inductive properties.",
         "Ça va? naïve", ""]


CORPUS = "beir:medline"  # 1,033 real documents: every parameter exports and encodes it


@pytest.fixture(scope="module")
def corpus(shared_data):
    return load_evaluation(CORPUS, None, str(shared_data))


@pytest.mark.slow
@pytest.mark.parametrize("precision,rescore", [("binary", 30), ("int8", None), ("float32", None)])
def test_the_served_retriever_ranks_as_evaluate_does_under_every_loader(tmp_path, tiny_model_dir, shared_data,
                                                                       corpus, precision, rescore):
    out = tmp_path / "out"
    arguments = ["--model_dir", str(tiny_model_dir), "--out", str(out), "--corpus", CORPUS, "--data_dir",
                 str(shared_data), "--dims", "16", "--precision", precision, "--k", "10"]
    assert export_command.main(arguments + (["--rescore", str(rescore)] if rescore else [])) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    search = manifest["models"]["retriever"]["search"]
    assert (search["kind"], search["dims"], search["precision"], search["rescore"]) == ("codes", 16, precision,
                                                                                        rescore)
    assert (search["calibration"] is not None) == (precision == "int8")
    # The same ranking as evaluate's index with the same options, on the same embeddings.
    model = load_trained_model(tiny_model_dir)
    doc_ids = list(corpus.corpus)
    embeddings = model.encode_documents([corpus.document_text(d) for d in doc_ids], verbose=False)
    index = QuantizedIndex(embeddings, doc_ids, 16, precision, rescore)
    assert search["code_bytes"] == index.code_bytes
    want_ids, want_scores = index.search(model.encode_queries(TEXTS), 10)
    served = run_like_tf_serving(out / "retriever" / "1", TEXTS)
    np.testing.assert_allclose(served["scores"], want_scores, atol=1e-4)
    same = np.mean(served["doc_ids"].astype(str) == want_ids.astype(str))
    assert same >= 0.9, same  # the rest: near-ties of float rounding between TensorFlow and NumPy
    reference = run_tf2(out / "retriever" / "1", TEXTS)
    np.testing.assert_array_equal(served["doc_ids"], reference["doc_ids"])
    ops = saved_model_op_types(out / "retriever" / "1")
    assert not [op for op in ops if "scann" in op.lower()]
    if precision == "binary":
        assert {"PopulationCount", "BitwiseXor"} <= ops
    # A prefix signature on each encoder: the first 16 dimensions, re-normalised.
    full = run_like_tf_serving(out / "query_encoder" / "1", TEXTS)["embedding"]
    prefix = run_like_tf_serving(out / "query_encoder" / "1", TEXTS, signature="dims_16")["embedding"]
    np.testing.assert_allclose(prefix, full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True),
                               atol=1e-5)
    if precision != "binary":  # the command's own code, in this process (the binary case types it, below)
        assert export_command.main(["--check", str(out)]) == 0
    else:  # the commands a user types, each in a fresh process: the check, and hub.KerasLayer in tf_keras
        checked = subprocess.run([sys.executable, "-m", "samtone_tf.export", "--check", str(out)],
                                 cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=600)
        assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
        script = f"""
import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import json
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401
layer = hub.KerasLayer({str(out / 'retriever' / '1')!r}, signature="serving_default", signature_outputs_as_dict=True)
print(json.dumps(layer(tf.constant({TEXTS!r}))["doc_ids"].numpy().astype(str).tolist()))
"""
        hub_result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert hub_result.returncode == 0, hub_result.stderr[-3000:]
        assert json.loads(hub_result.stdout.strip().splitlines()[-1]) == served["doc_ids"].astype(str).tolist()


def test_codes_need_the_exact_retriever_of_a_corpus(tmp_path, tiny_model_dir):
    with pytest.raises(SystemExit):
        export_command.main(["--model_dir", str(tiny_model_dir), "--out", str(tmp_path / "e"), "--precision",
                             "binary"])
    with pytest.raises(SystemExit):
        export_command.main(["--model_dir", str(tiny_model_dir), "--out", str(tmp_path / "e"), "--corpus",
                             "beir:scifact", "--dims", "8", "--retriever", "partitioned"])
