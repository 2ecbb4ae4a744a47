"""Corpus encoding on Apache Beam (DirectRunner), as users run it: `python -m samtone_tf.encode` on a real corpus
of ../shared/data, in memory and with 2 worker processes (typed in a fresh process); `python -m samtone_tf.index
build` on its shards; `python -m samtone_tf.evaluate --index_dir` on that index (through each command's `main`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samtone_tf.locations import REPOSITORY_ROOT
from tests.helpers import TINY_VOCABULARY, command_in_process

# Trains beyond a few steps, exports SavedModels or starts subprocesses: out of the fast loop.
pytestmark = pytest.mark.slow

CORPUS = "beir:medline"  # 1,033 real documents: small enough to encode three times in CI


def run_command(*args, check=True, typed=False):
    """`python -m samtone_tf.X ARGS` -> CompletedProcess: through the command's `main` in this process, or `typed`
    as a user types it, in a fresh process (for Beam's worker processes)."""
    if typed:
        env = dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT))
        result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env,
                                cwd=REPOSITORY_ROOT, timeout=900)
    else:
        result = command_in_process(*args)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr[-4000:]}")
    return result


def read_shards(directory):
    from samtone_tf.embedding_shards import load_embeddings

    doc_ids, embeddings = load_embeddings(directory)
    return dict(zip(doc_ids, embeddings))


@pytest.fixture(scope="module")
def model_and_export(tmp_path_factory):
    from samtone_tf.model.towers import tiny_dual_encoder
    from samtone_tf.serving import export

    model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    out = tmp_path_factory.mktemp("beam") / "export"
    export(model, out, verbose=False)
    return model, out


@pytest.fixture(scope="module")
def medline(shared_data):
    from samtone_tf.data.datasets import load_evaluation

    return load_evaluation(CORPUS, data_directory=shared_data)


@pytest.fixture(scope="module")
def encoded(model_and_export, medline, shared_data, tmp_path_factory):
    """The medline corpus encoded by the pipeline in this process (Beam's default in-memory runner)."""
    from samtone_tf.encode import main

    _, export_dir = model_and_export
    out = tmp_path_factory.mktemp("encoded") / "medline"
    assert main(["--model", str(export_dir), "--corpus", CORPUS, "--out", str(out), "--data_dir", str(shared_data),
                 "--batch_size", "16"]) == 0
    return out


def test_pipeline_gives_every_document_once_with_the_in_process_embeddings(encoded, model_and_export, medline):
    model, _ = model_and_export
    manifest = json.loads((encoded / "manifest.json").read_text())
    vectors = read_shards(encoded)
    assert sorted(vectors) == sorted(medline.corpus) and manifest["count"] == len(medline.corpus)
    assert manifest["dead_letters"] == 0 and manifest["dimension"] == model.query_tower.output_dim
    doc_ids = list(medline.corpus)
    reference = model.encode_documents([medline.document_text(d) for d in doc_ids], verbose=False)
    np.testing.assert_allclose(np.stack([vectors[d] for d in doc_ids]), reference, atol=1e-5)


def test_two_worker_processes_give_the_same_embeddings(encoded, model_and_export, shared_data, tmp_path):
    _, export_dir = model_and_export
    out = tmp_path / "two-workers"
    result = run_command("samtone_tf.encode", "--model", str(export_dir), "--corpus", CORPUS, "--out", str(out),
                         "--data_dir", str(shared_data), "--direct_num_workers", "2",
                         "--direct_running_mode", "multi_processing", "--num_shards", "3", typed=True)
    assert "encoded 1033 documents" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3 and all(s["records"] > 0 for s in manifest["shards"])
    expected, found = read_shards(encoded), read_shards(out)
    assert sorted(found) == sorted(expected)
    for doc_id, vector in expected.items():
        np.testing.assert_allclose(found[doc_id], vector, atol=1e-5)


def test_unreadable_documents_go_to_the_dead_letters_with_file_and_line(model_and_export, shared_data, tmp_path):
    from samtone_tf.encode import main

    _, export_dir = model_and_export
    good = (shared_data / "classic" / "medline" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    lines = (good[:10]
             + ['{"_id": "broken", "text": "no closing brace"',           # 11 invalid JSON
                '{"title": "t", "text": "no id"}',                        # 12 missing _id
                '{"_id": "empty", "title": " ", "text": ""}',            # 13 empty text
                json.dumps(json.loads(good[0]))]                           # 14 duplicate of line 1
             + good[10:20] + [""] + good[20:40]                           # a blank line is skipped, not dead
             + ['{"_id": 77, "text": "a numeric id is kept"}'])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(("\n".join(lines) + "\n").encode("utf-8") + b'{"_id": "bad-utf8", "text": "\xff"}\n')
    out = tmp_path / "out"
    assert main(["--model", str(export_dir), "--corpus", str(corpus), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    dead = sorted((json.loads(line) for f in sorted(out.glob("dead_letters-*.jsonl"))
                   for line in f.read_text().splitlines() if line.strip()), key=lambda d: d["line"])
    assert [(d["line"], os.path.basename(d["file"])) for d in dead] == [
        (11, "corpus.jsonl"), (12, "corpus.jsonl"), (13, "corpus.jsonl"), (14, "corpus.jsonl"), (47, "corpus.jsonl")]
    reasons = [d["reason"] for d in dead]
    assert reasons[0].startswith("invalid JSON") and reasons[1] == "missing field '_id'"
    assert reasons[2].startswith("empty text") and reasons[3].startswith("duplicate id")
    assert reasons[4].startswith("invalid UTF-8")
    assert manifest["dead_letters"] == 5 and manifest["count"] == 41
    assert "77" in read_shards(out)


def dead_line(dead, line):
    return next(d for d in dead if d["line"] == line)


def test_id_text_collection_dead_letters_name_the_line(model_and_export, tmp_path):
    from samtone_tf.encode import main

    _, export_dir = model_and_export
    directory = tmp_path / "marco"
    directory.mkdir()
    (directory / "collection.tsv").write_bytes(b"1\tthe first passage\n2\tsecond\tthird field\n3\t \n4\tfourth\n"
                                               b"5\ta carriage\rreturn inside\n")
    out = tmp_path / "out"
    assert main(["--model", str(export_dir), "--corpus", str(directory), "--out", str(out)]) == 0
    dead = [json.loads(line) for f in out.glob("dead_letters-*.jsonl") for line in f.read_text().splitlines()]
    assert sorted((d["line"], d["reason"]) for d in dead)[:2] == [
        (2, "expected 2 tab-separated fields, found 3"), (3, "empty text for id '3'")]
    assert len(dead) == 3 and dead_line(dead, 5)["reason"].startswith("not a tab-separated line")
    assert sorted(read_shards(out)) == ["1", "4"]


def test_a_second_run_refuses_unless_overwrite_and_a_failed_overwrite_keeps_the_earlier_output(
        encoded, model_and_export, tmp_path, shared_data):
    _, export_dir = model_and_export
    out = tmp_path / "out"
    shutil.copytree(encoded, out)
    refused = run_command("samtone_tf.encode", "--model", str(export_dir), "--corpus", CORPUS, "--out", str(out),
                          "--data_dir", str(shared_data), check=False)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr and "Traceback" not in refused.stderr
    assert (out / "manifest.json").is_file()
    broken = tmp_path / "broken-export"
    shutil.copytree(export_dir, broken)
    for variables in broken.glob("document_encoder/*/variables/variables.data-*"):
        variables.write_bytes(b"damaged")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    failed = run_command("samtone_tf.encode", "--model", str(broken), "--corpus", CORPUS, "--out", str(out),
                         "--data_dir", str(shared_data), "--overwrite", check=False)
    # The new run never completed: the earlier output is still whole (--overwrite replaces it only on success).
    assert failed.returncode != 0 and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert "Traceback" not in failed.stderr and failed.stderr.strip().splitlines()[-1].startswith("error:")


@pytest.mark.parametrize("kind", ["exact", "scann"])
def test_index_from_shards_answers_like_one_from_in_process_embeddings(encoded, model_and_export, medline,
                                                                       tmp_path, kind):
    from samtone_tf.index.search import ExactIndex, ScannIndex, load_index

    model, _ = model_and_export
    result = run_command("samtone_tf.index", "build", "--embeddings", str(encoded), "--out", str(tmp_path / "index"),
                         "--kind", kind)
    assert f"{kind} index of 1033 documents" in result.stdout
    built = load_index(tmp_path / "index")
    doc_ids = list(medline.corpus)
    embeddings = model.encode_documents([medline.document_text(d) for d in doc_ids], verbose=False)
    direct = ExactIndex(embeddings, doc_ids) if kind == "exact" else ScannIndex(embeddings, doc_ids)
    queries = model.encode_queries(list(medline.queries.values()), verbose=False)
    found_ids, found_scores = built.search(queries, 10)
    direct_ids, direct_scores = direct.search(queries, 10)
    np.testing.assert_allclose(found_scores, direct_scores, atol=1e-5)
    # Ids agree except where two documents tie within float noise.
    assert np.mean(found_ids == direct_ids) > 0.99
    if kind == "scann":
        assert (tmp_path / "index" / "scann_tf" / "saved_model.pb").is_file()  # export's index/N layout


def test_evaluating_with_the_prebuilt_index_gives_the_metrics_of_evaluate(encoded, model_and_export, shared_data,
                                                                          tmp_path):
    _, export_dir = model_and_export
    run_command("samtone_tf.index", "build", "--embeddings", str(encoded), "--out", str(tmp_path / "index"),
                "--kind", "exact")
    common = ["samtone_tf.evaluate", "--model", str(export_dir), "--dataset", CORPUS, "--data_dir", str(shared_data)]
    run_command(*common, "--out", str(tmp_path / "direct.json"))
    run_command(*common, "--index_dir", str(tmp_path / "index"), "--out", str(tmp_path / "prebuilt.json"))
    direct = json.loads((tmp_path / "direct.json").read_text())
    prebuilt = json.loads((tmp_path / "prebuilt.json").read_text())
    assert prebuilt["index"].startswith("prebuilt exact index")
    for measure, value in direct["metrics"].items():
        assert prebuilt["metrics"][measure] == pytest.approx(value, abs=1e-6), measure



def test_a_codes_index_from_shards_evaluates_as_evaluate_with_the_same_codes(encoded, model_and_export, shared_data,
                                                                            tmp_path):
    """index build --kind codes takes evaluate's --dims/--precision/--rescore: searching the built index gives
    the metrics of evaluate encoding the corpus itself with the same codes."""
    _, export_dir = model_and_export
    codes = ["--dims", "16", "--precision", "int8", "--rescore", "50"]
    run_command("samtone_tf.index", "build", "--embeddings", str(encoded), "--out", str(tmp_path / "codes"),
                "--kind", "codes", *codes)
    manifest = json.loads((tmp_path / "codes" / "manifest.json").read_text())
    assert (manifest["kind"], manifest["dims"], manifest["precision"], manifest["rescore"]) == ("codes", 16,
                                                                                               "int8", 50)
    assert manifest["provenance"]["document_tower"] and manifest["provenance"]["corpus"]
    common = ["samtone_tf.evaluate", "--model", str(export_dir), "--dataset", CORPUS, "--data_dir", str(shared_data)]
    run_command(*common, *codes, "--out", str(tmp_path / "direct.json"))
    run_command(*common, "--index_dir", str(tmp_path / "codes"), "--out", str(tmp_path / "prebuilt.json"))
    direct = json.loads((tmp_path / "direct.json").read_text())
    prebuilt = json.loads((tmp_path / "prebuilt.json").read_text())
    assert prebuilt["index"].startswith("prebuilt codes index")
    assert prebuilt["quantization"] == direct["quantization"]
    for measure, value in direct["metrics"].items():  # the shards' embeddings are the in-process ones to ~1e-6
        assert prebuilt["metrics"][measure] == pytest.approx(value, abs=1e-3), measure


def test_a_scann_index_on_a_prefix_evaluates_as_evaluate_with_the_same_options(encoded, model_and_export,
                                                                               shared_data, tmp_path):
    """index build --kind scann --dims D --rescore K: ScaNN on the prefix, re-ranked at the full dimension; searching
    it gives the metrics of evaluate --index scann with the same options, and it passes evaluate's checks."""
    from samtone_tf.evaluate import evaluate
    from samtone_tf.index.__main__ import build_index

    _, export_dir = model_and_export
    manifest = build_index(encoded, tmp_path / "prefix", kind="scann", codes={"dims": 16, "rescore": 50})
    assert (manifest["kind"], manifest["dims"], manifest["rescore"]) == ("scann", 16, 50)
    direct = evaluate(export_dir, CORPUS, data_dir=shared_data, verbose=False, index="scann", dims=16, rescore=50)
    prebuilt = evaluate(export_dir, CORPUS, data_dir=shared_data, verbose=False, index_dir=tmp_path / "prefix")
    assert direct["scann_prefix"] == prebuilt["scann_prefix"] == {"dims": 16, "rescore": 50}
    whole = evaluate(export_dir, CORPUS, data_dir=shared_data, verbose=False, index="scann")
    assert "scann_prefix" not in whole
    for measure, value in direct["metrics"].items():  # the shards' embeddings are the in-process ones to ~1e-6
        assert prebuilt["metrics"][measure] == pytest.approx(value, abs=1e-3), measure


def test_an_index_of_another_corpus_is_refused(encoded, model_and_export, shared_data, tmp_path):
    from samtone_tf.evaluate import evaluate
    from samtone_tf.index.__main__ import build_index

    _, export_dir = model_and_export
    build_index(encoded, tmp_path / "index", kind="exact")
    # CACM numbers its documents 1..3204 and medline 1..1033: the ids fit, the texts do not (the corpus fingerprint).
    with pytest.raises(ValueError, match=r"another corpus \(or another version of it\) with the same ids"):
        evaluate(export_dir, "beir:cacm", data_dir=shared_data, verbose=False, index_dir=tmp_path / "index")
    _forget_provenance(tmp_path / "index")  # an index of an earlier version: the sampled check still refuses it
    with pytest.raises(ValueError, match="find themselves in the index"):
        evaluate(export_dir, "beir:cacm", data_dir=shared_data, verbose=False, index_dir=tmp_path / "index")


def _forget_provenance(index_dir):
    manifest = json.loads((index_dir / "manifest.json").read_text())
    del manifest["provenance"]
    (index_dir / "manifest.json").write_text(json.dumps(manifest))


def test_damaged_shards_are_refused_by_their_checksum(encoded, tmp_path):
    from samtone_tf.embedding_shards import load_embeddings

    copy = tmp_path / "copy"
    shutil.copytree(encoded, copy)
    shard = sorted(copy.glob("embeddings-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # the last record's CRC: the framing still adds up, the record's CRC does not
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"record \d+: its bytes fail their CRC"):
        load_embeddings(copy)
    shard.write_bytes(bytes(data[: len(data) - 3]))
    with pytest.raises(ValueError, match="truncated"):
        load_embeddings(copy)


def test_an_index_of_another_model_is_refused(encoded, shared_data, tmp_path):
    from samtone_tf.evaluate import evaluate
    from samtone_tf.index.__main__ import build_index
    from samtone_tf.model.towers import tiny_dual_encoder
    from samtone_tf.serving import export

    other = tmp_path / "other-export"
    export(tiny_dual_encoder(TINY_VOCABULARY, "ade", seed=7), other, verbose=False)
    build_index(encoded, tmp_path / "index", kind="exact")
    with pytest.raises(ValueError, match="its embeddings were made by the document tower .*, not this model's"):
        evaluate(other, CORPUS, data_dir=shared_data, verbose=False, index_dir=tmp_path / "index")
    _forget_provenance(tmp_path / "index")
    with pytest.raises(ValueError, match="find themselves in the index"):
        evaluate(other, CORPUS, data_dir=shared_data, verbose=False, index_dir=tmp_path / "index")


def test_export_with_a_prebuilt_index_serves_it_without_encoding_the_corpus(encoded, model_and_export, medline,
                                                                            shared_data, tmp_path):
    from samtone_tf.index.search import ScannIndex
    from samtone_tf.serving import run_like_tf_serving

    model, _ = model_and_export
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    model.save(model_dir / "model.keras")
    run_command("samtone_tf.index", "build", "--embeddings", str(encoded), "--out", str(tmp_path / "index"))
    out = tmp_path / "export"
    result = run_command("samtone_tf.export", "--model_dir", str(model_dir), "--out", str(out), "--corpus", CORPUS,
                         "--data_dir", str(shared_data), "--index", str(tmp_path / "index"), "--k", "5")
    assert "1033 documents embedded beforehand" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["corpus"]["documents"] == 1033
    prebuilt, exported = ScannIndex.load(tmp_path / "index"), ScannIndex.load(out / "index" / "1")
    queries = model.encode_queries(list(medline.queries.values())[:8], verbose=False)
    np.testing.assert_array_equal(exported.search(queries, 5)[0], prebuilt.search(queries, 5)[0])
    # The retriever, loaded as TF Serving loads it, ranks the shards' embeddings exactly.
    vectors = read_shards(encoded)
    doc_ids = list(vectors)
    served = run_like_tf_serving(out / "retriever" / "1", list(medline.queries.values())[:8])
    scores = queries @ np.stack([vectors[d] for d in doc_ids]).T
    np.testing.assert_allclose(served["scores"], -np.sort(-scores, axis=1)[:, :5], atol=1e-5)


def test_a_model_dir_and_a_single_file_corpus_go_through_the_pipeline(model_and_export, shared_data, tmp_path):
    from samtone_tf.data.datasets import load_evaluation
    from samtone_tf.encode import main

    model, _ = model_and_export
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    model.save(model_dir / "model.keras")
    dataset = f"reqa:{shared_data / 'squad2-dev-sample' / 'dev-v2.0-sample.json'}"
    out = tmp_path / "out"
    assert main(["--model", str(model_dir), "--corpus", dataset, "--out", str(out)]) == 0
    data = load_evaluation(dataset, "dev")
    vectors = read_shards(out)
    assert sorted(vectors) == sorted(data.corpus)
    doc_ids = list(data.corpus)
    reference = model.encode_documents([data.document_text(d) for d in doc_ids], verbose=False)
    np.testing.assert_allclose(np.stack([vectors[d] for d in doc_ids]), reference, atol=1e-5)
    assert (out / "document_encoder" / "saved_model.pb").is_file()


def test_index_build_to_a_recall_target_records_its_choice(tmp_path):
    import tensorflow as tf

    from samtone_tf.embedding_shards import example_bytes, write_manifest
    from samtone_tf.index.__main__ import build_index
    from samtone_tf.index.search import ScannIndex

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(300, 32))
    vectors = centers[rng.integers(0, 300, size=25_000)] + rng.normal(scale=0.3, size=(25_000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    shards = tmp_path / "shards"
    shards.mkdir()
    for shard in range(2):
        with tf.io.TFRecordWriter(str(shards / f"embeddings-{shard:05d}-of-00002.tfrecord")) as writer:
            for row in range(shard, len(vectors), 2):
                writer.write(example_bytes(f"d{row}", vectors[row]))
    write_manifest(shards, {"path": "synthetic"}, 32)
    manifest = build_index(shards, tmp_path / "index", k=10, target_recall=0.9, say=lambda *a: None)
    tuning = manifest["settings"]["tuning"]
    assert manifest["settings"]["mode"] == "tree_ah" and tuning["reached"] and tuning["target_recall"] == 0.9
    # Held-out documents (as queries, each excluded from its own results), not seen by the tuning, within 0.03.
    assert tuning["held_out_recall"] >= 0.87
    index = ScannIndex.load(tmp_path / "index")
    assert index.settings["num_leaves_to_search"] == manifest["settings"]["num_leaves_to_search"]


def test_the_local_runner_is_named_explicitly_and_other_runners_are_kept():
    """Beam 2.77's DirectRunner tries its Prism runner first (a binary it downloads): encode names the in-process
    FnApiRunner instead, when no runner or DirectRunner is asked; any other runner passes through."""
    from samtone_tf.encode import LOCAL_RUNNER, with_explicit_runner

    assert with_explicit_runner(["--direct_num_workers", "2"]) == ["--direct_num_workers", "2",
                                                                   f"--runner={LOCAL_RUNNER}"]
    assert with_explicit_runner(["--runner", "DirectRunner"]) == [f"--runner={LOCAL_RUNNER}"]
    assert with_explicit_runner(["--runner=DataflowRunner", "--project", "p"]) == ["--project", "p",
                                                                                   "--runner=DataflowRunner"]
    from apache_beam.runners.runner import create_runner

    assert type(create_runner(LOCAL_RUNNER)).__name__ == "FnApiRunner"


def test_the_same_command_after_a_kill_keeps_the_complete_shards_and_encodes_only_the_rest(
        encoded, model_and_export, shared_data, tmp_path, capsys):
    """Case 10 of issue 41: a killed encode needed --overwrite and started again (days, for a large corpus). Now
    each shard is written whole with a completion record; the same command keeps the shards whose bytes match it
    and encodes only the documents of the others."""
    import shutil

    from samtone_tf.encode import main

    _, export_dir = model_and_export
    out = tmp_path / "medline"
    shutil.copytree(encoded, out)
    shards = sorted(out.glob("embeddings-*.tfrecord"))
    assert len(shards) == 16 and all(Path(f"{s}.complete.json").is_file() for s in shards)
    # What a kill leaves: no manifest, a shard never written, a shard whose bytes are not those it completed with.
    (out / "manifest.json").unlink()
    missing, damaged, kept = shards[3], shards[7], [s for s in shards if s not in (shards[3], shards[7])]
    lost = json.loads(Path(f"{missing}.complete.json").read_text())["records"] + json.loads(
        Path(f"{damaged}.complete.json").read_text())["records"]
    missing.unlink()
    Path(f"{missing}.complete.json").unlink()
    damaged.write_bytes(damaged.read_bytes()[:-7])
    stamps = {s.name: (s.stat().st_mtime_ns, s.read_bytes()) for s in kept}
    capsys.readouterr()
    assert main(["--model", str(export_dir), "--corpus", CORPUS, "--out", str(out), "--data_dir", str(shared_data),
                 "--batch_size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "14 of 16 shards are complete and kept" in printed
    assert f"encoded {lost} documents in this run" in printed and "encoded 1033 documents" in printed
    assert {s.name: (s.stat().st_mtime_ns, s.read_bytes()) for s in kept} == stamps
    expected, found = read_shards(encoded), read_shards(out)
    assert sorted(found) == sorted(expected)
    for doc_id, vector in expected.items():
        np.testing.assert_allclose(found[doc_id], vector, atol=1e-6)
    # Another model is no resume: refused, the unfinished run kept.
    (out / "manifest.json").unlink()
    other = tmp_path / "other-export"
    from samtone_tf.model.towers import tiny_dual_encoder
    from samtone_tf.serving import export

    export(tiny_dual_encoder(TINY_VOCABULARY, "ade", seed=5), other, verbose=False)
    assert main(["--model", str(other), "--corpus", CORPUS, "--out", str(out), "--data_dir", str(shared_data)]) == 2
    assert "holds an unfinished encoding run of other settings (fingerprint" in capsys.readouterr().err
