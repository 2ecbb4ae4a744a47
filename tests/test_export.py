"""Exports: SavedModels loaded back (tf.saved_model, hub.KerasLayer), signatures, ops, atomicity."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.data.datasets import load_evaluation
from samtone_tf.data.records import RetrievalData
from samtone_tf.index.search import ExactIndex
from samtone_tf.model.towers import tiny_dual_encoder
from samtone_tf.retrieval import evaluate_encoder
from samtone_tf.serving import ExportedEncoder, export, saved_model_op_types
from tests.helpers import REPOSITORY_ROOT, TINY_VOCABULARY, command_in_process

# Trains beyond a few steps, exports SavedModels or starts subprocesses: out of the fast loop.
pytestmark = pytest.mark.slow

TEXTS = ["who sat on the mat", "The Normans were in Normandy.", "", "a dog, a cat; é ü", "x " * 200]
TF_TEXT_OPS = {"RegexSplitWithOffsets", "WordpieceTokenizeWithOffsets", "NormalizeUTF8"}


@pytest.fixture(scope="module")
def corpus(shared_data):
    """A real corpus: the first 60 WikiQA test questions and their candidate sentences."""
    wikiqa = load_evaluation("wikiqa", "test", shared_data)
    queries = dict(list(wikiqa.queries.items())[:60])
    qrels = {q: wikiqa.qrels[q] for q in queries}
    documents = {d for judged in qrels.values() for d in judged} | set(list(wikiqa.corpus)[:400])
    return RetrievalData("wikiqa-small", "test", {d: wikiqa.corpus[d] for d in documents}, queries, qrels)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, corpus):
    vocabulary = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocabulary.write_text("".join(t + "\n" for t in TINY_VOCABULARY))
    model = tiny_dual_encoder(vocabulary, "ade_spl", projection_dim=24)
    out = tmp_path_factory.mktemp("export") / "out"
    manifest = export(model, out, corpus=corpus, k=5, training_config={"steps": 0}, metrics={"x": 1.0},
                      verbose=False)
    return model, out, manifest


def test_saved_models_give_the_in_memory_outputs(exported):
    model, out, _ = exported
    texts = tf.constant(TEXTS)
    for name, tower in (("query_encoder", model.query_tower), ("document_encoder", model.document_tower)):
        loaded = tf.saved_model.load(str(out / name / "1"))
        served = loaded.signatures["serving_default"](text=texts)["embedding"]
        assert served.shape == (len(TEXTS), 24)
        np.testing.assert_allclose(served, tower(texts), atol=1e-5)
        np.testing.assert_allclose(loaded(texts), tower(texts), atol=1e-5)  # the callable hub uses


def test_retriever_returns_the_exact_top_k(exported, corpus):
    model, out, manifest = exported
    doc_ids = list(corpus.corpus)
    embeddings = model.encode_documents([corpus.document_text(d) for d in doc_ids], verbose=False)
    queries = list(corpus.queries.values())[:10]
    want_ids, want_scores = ExactIndex(embeddings, doc_ids).search(model.encode_queries(queries, verbose=False), 5)
    result = tf.saved_model.load(str(out / "retriever" / "1")).signatures["serving_default"](
        text=tf.constant(queries))
    np.testing.assert_allclose(result["scores"], want_scores, atol=1e-5)
    got_ids = result["doc_ids"].numpy().astype(str)
    assert (got_ids == want_ids.astype(str)).mean() > 0.98  # equal up to near-ties
    assert manifest["models"]["retriever"]["outputs"]["doc_ids"] == "string [None, 5]"


def test_hub_keras_layer_in_tf_keras_gives_the_same_embeddings(exported, tmp_path):
    model, out, _ = exported
    script = f"""
import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401
import tf_keras
text = tf_keras.Input(shape=(), dtype=tf.string)
embedding = hub.KerasLayer({str(out / 'query_encoder' / '1')!r})(text)
encoder = tf_keras.Model(text, embedding)
assert "tf_keras" in type(encoder).__module__
np.save({str(tmp_path / 'hub.npy')!r}, encoder(tf.constant({TEXTS!r})).numpy())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "hub.npy"), model.query_tower(tf.constant(TEXTS)), atol=1e-5)


def test_saved_model_cli_lists_the_signatures(exported):
    _, out, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", str(out / "query_encoder" / "1"), "--all"],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "signature_def['serving_default']" in shown.stdout
    assert "inputs['text']" in shown.stdout and "outputs['embedding']" in shown.stdout
    retriever = subprocess.run([cli, "show", "--dir", str(out / "retriever" / "1"), "--all"],
                               capture_output=True, text=True, timeout=300)
    assert "outputs['doc_ids']" in retriever.stdout and "outputs['scores']" in retriever.stdout


def test_op_types_each_saved_model_needs(exported):
    _, out, _ = exported
    for name in ("query_encoder", "document_encoder", "retriever"):
        ops = saved_model_op_types(out / name / "1")
        assert TF_TEXT_OPS <= ops, name
        assert not [op for op in ops if "scann" in op.lower()], name  # stock TF Serving can serve it
    assert {"TopKV2", "MatMul"} <= saved_model_op_types(out / "retriever" / "1")
    # Exactly the non-core ops export/README.md lists: checked in a process without tensorflow_text.
    ops = {name: sorted(saved_model_op_types(out / name / "1")) for name in ("query_encoder", "document_encoder",
                                                                             "retriever")}
    script = ("import json, sys; from tensorflow.python.framework import op_def_registry; "
              "ops = json.loads(sys.argv[1]); "
              "print(json.dumps({n: sorted(o for o in v if op_def_registry.get(o) is None) for n, v in ops.items()}))")
    found = subprocess.run([sys.executable, "-c", script, json.dumps(ops)], capture_output=True, text=True,
                           timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    non_core = json.loads(found.stdout.strip().splitlines()[-1])
    assert non_core == {name: sorted(TF_TEXT_OPS) for name in ops}
    readme = (REPOSITORY_ROOT / "export" / "README.md").read_text()
    assert all(f"`{op}`" in readme for op in TF_TEXT_OPS)
    assert [op for op in saved_model_op_types(out / "index" / "1" / "scann_tf") if "Scann" in op]


def test_manifest_and_serving_config(exported):
    _, out, manifest = exported
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["version"] == 1 and manifest["dimension"] == 24 and manifest["architecture"] == "ade_spl"
    assert manifest["training_config"] == {"steps": 0} and manifest["metrics"] == {"x": 1.0}
    config = (out / "models.config").read_text()
    for name in ("query_encoder", "document_encoder", "retriever"):
        assert f'name: "{name}"' in config and f'base_path: "/models/{name}"' in config
    assert json.loads((out / "index" / "1" / "manifest.json").read_text())["size"] == len(
        json.loads((out / "index" / "1" / "doc_ids.json").read_text()))


def test_evaluating_the_export_gives_the_in_memory_metrics(exported, corpus):
    model, out, _ = exported
    in_memory = evaluate_encoder(model, corpus, verbose=False)
    from_export = evaluate_encoder(ExportedEncoder(out), corpus, verbose=False)
    for measure in ("P@1", "MRR@10", "nDCG@10", "Recall@10", "Recall@100"):
        assert from_export[measure] == pytest.approx(in_memory[measure], abs=1e-6), measure


@pytest.fixture
def model_dir(tiny_model_dir):
    return tiny_model_dir


def export_command(model_dir, out, *extra):
    return [sys.executable, "-m", "samtone_tf.export", "--model_dir", str(model_dir), "--out", str(out), *extra]


def test_an_interrupted_export_leaves_no_version_directory(model_dir, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(export_command(model_dir, out), cwd=REPOSITORY_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if list(out.glob(".incomplete-1-*/query_encoder")):
            process.send_signal(signal.SIGKILL)  # mid-way through writing version 1
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "query_encoder" / "1").exists() and not (out / "document_encoder").exists()
    assert not (out / "manifest.json").exists()
    # Started again, it removes the leftover staging directory and completes.
    again = command_in_process(*export_command(model_dir, out)[2:])
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "query_encoder" / "1" / "saved_model.pb").is_file()
    assert not list(out.glob(".incomplete-*"))


def test_exporting_over_a_version_refuses_unless_overwrite(model_dir, tmp_path, capsys):
    from samtone_tf import export as export_main

    out = tmp_path / "out"
    # The refusal as a user meets it (a fresh process); the other exports run the command's own main here.
    assert export_main.main(export_command(model_dir, out, "--version", "3")[3:]) == 0
    before = (out / "query_encoder" / "3" / "saved_model.pb").stat().st_mtime_ns
    refused = subprocess.run(export_command(model_dir, out, "--version", "3"), cwd=REPOSITORY_ROOT,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "query_encoder/3" in refused.stderr and "exist; pass --overwrite to replace version 3" in refused.stderr
    assert (out / "query_encoder" / "3" / "saved_model.pb").stat().st_mtime_ns == before
    assert export_main.main(export_command(model_dir, out, "--version", "3", "--overwrite")[3:]) == 0, \
        capsys.readouterr().err[-2000:]
    assert (out / "query_encoder" / "3" / "saved_model.pb").stat().st_mtime_ns != before
    assert sorted(p.name for p in (out / "query_encoder").iterdir()) == ["3"]
    # Without --version the next export is version 4.
    assert export_main.main(export_command(model_dir, out)[3:]) == 0 and (out / "document_encoder" / "4").is_dir()


def test_export_builds_its_index_to_a_recall_target(model_dir, tmp_path, shared_data):
    from samtone_tf.index.search import ScannIndex

    out = tmp_path / "out"
    result = command_in_process(*export_command(model_dir, out, "--corpus", "beir:scifact", "--data_dir",
                                                str(shared_data), "--target_recall", "0.95", "--k", "10")[2:])
    assert result.returncode == 0, result.stderr[-2000:]
    tuning = json.loads((out / "manifest.json").read_text())["corpus"]["index_tuning"]
    # SciFact's 5,183 documents are below ScaNN's tree size: searched exactly, so the target is met exactly.
    assert tuning["target_recall"] == 0.95 and tuning["reached"] and tuning["held_out_recall"] == 1.0
    index = ScannIndex.load(out / "index" / "1")
    assert index.settings["tuning"]["queries"] + index.settings["tuning"]["held_out_queries"] == 300  # real queries
    refused = command_in_process(*export_command(model_dir, tmp_path / "other", "--corpus", "beir:scifact",
                                                 "--target_recall", "1.5")[2:])
    assert refused.returncode == 2 and "target_recall 1.5: needs a corpus and a value in (0, 1]" in refused.stderr
