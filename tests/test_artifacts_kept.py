"""What a user keeps is never deleted, mixed or silently wrong (issue 41), tried on the command line as a careless or
unlucky user would: each case is refused with one line, or handled with nothing lost.

Commands run through their own `main` in the test process (`run`: the same parser, code, exit status and lines);
those whose case involves processes start one as a user's shell does (`typed`): a lock held by the test process,
two exports at once, a working directory and environment of the user's, training (signal handlers and seeds are
the process's), a disk filling up under a fresh process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from samtone_tf import serving
from samtone_tf.embedding_shards import example_bytes, write_manifest
from samtone_tf.model.fingerprint import tower_fingerprint
from samtone_tf.model.towers import tiny_dual_encoder
from samtone_tf.provenance import document_digest
from samtone_tf.training.run_dir import RunLock
from tests.helpers import REPOSITORY_ROOT, TINY_VOCABULARY, WORDS, command_in_process

pytestmark = pytest.mark.slow


run = command_in_process  # `python -m samtone_tf.X ARGS` through the command's `main`, in this process


def typed(*args, cwd=REPOSITORY_ROOT, env=None):
    """A samtone_tf command as a user types it (a fresh process)."""
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=environment, cwd=cwd,
                          timeout=900)


def refused(result, *phrases):
    """Exit 2, one `error:` line naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in errors[0], (phrase, errors[0])
    return errors[0]


def snapshot(directory):
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


def documents(count=24):
    return [(f"d{i}", " ".join(WORDS[i % 7: i % 7 + 3 + i % 5])) for i in range(count)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small BEIR corpus; two training model_dirs (model A, and B: A with one weight nudged by 1e-4, a 'nearly
    identical' model); embeddings of the corpus by B written as `encode` writes them; an export of A."""
    root = tmp_path_factory.mktemp("world")
    corpus = root / "corpus"
    (corpus / "qrels").mkdir(parents=True)
    (corpus / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n"
                                                 for i, t in documents()))
    (corpus / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{n}", "text": f"where is {t}"}) + "\n"
                                                  for n, (_, t) in enumerate(documents()[:6])))
    (corpus / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(6)))
    a = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    b = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    variable = b.document_tower.trainable_variables[0]
    variable.assign(variable + 1e-4)
    for name, model in (("a", a), ("b", b)):
        (root / name).mkdir()
        model.save(root / name / "model.keras")
    embeddings = root / "embeddings-b"
    embeddings.mkdir()
    texts = dict(documents())
    vectors = b.encode_documents(list(texts.values()), verbose=False)
    with tf.io.TFRecordWriter(str(embeddings / "embeddings-00000-of-00001.tfrecord")) as writer:
        for (doc_id, text), vector in zip(texts.items(), vectors):
            writer.write(example_bytes(doc_id, vector, document_digest(doc_id, text)))
    write_manifest(str(embeddings), {"path": str(root / "b"), "version": None, "saved_model": "document_encoder",
                                     "fingerprint": tower_fingerprint(b.document_tower)}, vectors.shape[1])
    export = root / "export-a"
    serving.export(a, export, verbose=False)
    return {"root": root, "corpus": f"beir:{corpus}", "a": root / "a", "b": root / "b", "embeddings": embeddings,
            "export": export, "model_a": a, "model_b": b}


def test_an_index_of_another_nearly_identical_model_is_refused_by_fingerprint(world, tmp_path):
    """Case 1: `export --index` and `evaluate --index_dir` used to take another model's embeddings (cosine 0.99995
    passed the sampled check); now the fingerprints recorded from encode to index are compared, naming both."""
    index = tmp_path / "index-b"
    built = run("samtone_tf.index", "build", "--embeddings", str(world["embeddings"]), "--out", str(index),
                "--kind", "exact")
    assert built.returncode == 0, built.stderr[-3000:]
    provenance = json.loads((index / "manifest.json").read_text())["provenance"]
    assert provenance["document_tower"] == tower_fingerprint(world["model_b"].document_tower)
    a_print = tower_fingerprint(world["model_a"].document_tower)[:12]
    line = refused(run("samtone_tf.export", "--model_dir", str(world["a"]), "--out", str(tmp_path / "e"),
                       "--corpus", world["corpus"], "--index", str(index)),
                   "document tower " + provenance["document_tower"][:12], a_print)
    assert "re-encode" in line and not (tmp_path / "e" / "manifest.json").exists()
    refused(run("samtone_tf.evaluate", "--model", str(world["a"]), "--dataset", world["corpus"], "--index_dir",
                str(index), "--out", str(tmp_path / "m.json")), a_print)
    # The right model's index is taken.
    served = run("samtone_tf.evaluate", "--model", str(world["b"]), "--dataset", world["corpus"], "--index_dir",
                 str(index), "--out", str(tmp_path / "m.json"))
    assert served.returncode == 0, served.stderr[-3000:]


def test_export_check_compares_each_model_with_the_fingerprints_of_the_export(world, tmp_path):
    """Case 1, the other half: `export --check` passed while the export served another model."""
    export = tmp_path / "export"
    shutil.copytree(world["export"], export)
    assert run("samtone_tf.export", "--check", str(export)).returncode == 0
    shutil.rmtree(export / "document_encoder" / "1")
    serving.save_encoder(world["model_b"].document_tower, export / "document_encoder" / "1")
    result = run("samtone_tf.export", "--check", str(export))
    assert result.returncode == 1 and "document_encoder  FAILED: its tower's fingerprint" in result.stdout, (
        result.stdout + result.stderr[-2000:])


def test_one_writer_per_export_directory(world, tmp_path):
    """Case 2: a second export while one holds the directory is refused with the holder; a stale lock (its process
    gone) is taken over."""
    export = tmp_path / "export"
    shutil.copytree(world["export"], export)
    before = snapshot(export)
    with RunLock(export, holder="export", advice="export to another --out"):
        refused(typed("samtone_tf.export", "--model_dir", str(world["a"]), "--out", str(export)),
                "is in use by another export (pid")
    assert snapshot(export) == before
    (export / ".lock").write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": os.uname().nodename}))
    taken = run("samtone_tf.export", "--model_dir", str(world["a"]), "--out", str(export))
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert "removing a stale lock of an export that is no longer running" in taken.stdout + taken.stderr
    assert json.loads((export / "manifest.json").read_text())["version"] == 2


def test_two_exports_started_together_leave_models_config_and_manifest_on_the_same_version(world, tmp_path):
    """Case 2, the race: both commands start at once; each either exports a version of its own or is refused by
    the lock, and TF Serving's config (read by its own parser) pins what the manifest commits."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    export = tmp_path / "export"
    shutil.copytree(world["export"], export)
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT))
    processes = [subprocess.Popen([sys.executable, "-m", "samtone_tf.export", "--model_dir", str(world[name]),
                                   "--out", str(export)], cwd=REPOSITORY_ROOT, env=environment, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("a", "b")]
    outcomes = [(p.wait(timeout=900), *p.communicate()) for p in processes]
    exported = [out for code, out, _ in outcomes if code == 0]
    for code, out, err in outcomes:
        assert code == 0 or (code == 2 and "in use by another export" in err), (code, out, err[-2000:])
    versions = sorted(int(out.split("exported version ")[1].split()[0]) for out in exported)
    assert exported and len(set(versions)) == len(versions)
    manifest = json.loads((export / "manifest.json").read_text())
    config = text_format.Parse((export / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    pinned = {c.name: list(c.model_version_policy.specific.versions) for c in config.model_config_list.config}
    assert pinned == {name: [manifest["version"]] for name in manifest["models"]}
    assert manifest["version"] == versions[-1]
    assert run("samtone_tf.export", "--check", str(export)).returncode == 0


def test_overwrite_never_deletes_what_is_not_its_output_nor_an_input(world, tmp_path):
    """Case 3: `encode --overwrite` wiped a directory of unrelated files, and the model when --out was --model;
    `index build --overwrite` with --out its own --embeddings destroyed its input."""
    unrelated = tmp_path / "thesis"
    unrelated.mkdir()
    (unrelated / "chapter1.tex").write_text("months of work")
    refused(run("samtone_tf.encode", "--model", str(world["export"]), "--corpus", world["corpus"], "--out",
                str(unrelated), "--overwrite"), "holds no samtone_tf embeddings", "chapter1.tex")
    assert (unrelated / "chapter1.tex").read_text() == "months of work"
    model = tmp_path / "model"
    shutil.copytree(world["a"], model)
    before = snapshot(model)
    refused(run("samtone_tf.encode", "--model", str(model), "--corpus", world["corpus"], "--out", str(model),
                "--overwrite"), "an input of this command")
    assert snapshot(model) == before
    embeddings = tmp_path / "embeddings"
    shutil.copytree(world["embeddings"], embeddings)
    before = snapshot(embeddings)
    refused(run("samtone_tf.index", "build", "--embeddings", str(embeddings), "--out", str(embeddings),
                "--overwrite"), "an input of this command")
    assert snapshot(embeddings) == before


def test_encode_overwrite_keeps_the_previous_output_until_the_new_one_is_complete(world, tmp_path):
    """Case 3: `encode --overwrite` deleted the previous good output before the new run was known to succeed."""
    out = tmp_path / "embeddings"
    shutil.copytree(world["embeddings"], out)
    (out / ".samtone_tf.json").write_text(json.dumps({"kind": "embeddings", "samtone_tf_version": "0.1.0"}))
    before = snapshot(out)
    broken = tmp_path / "broken-export"
    shutil.copytree(world["export"], broken)
    (broken / "document_encoder" / "1" / "saved_model.pb").write_bytes(b"damaged")
    result = run("samtone_tf.encode", "--model", str(broken), "--corpus", world["corpus"], "--out", str(out),
                 "--overwrite")
    refused(result, "cannot be loaded")
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".embeddings.")]


def test_export_into_a_directory_without_a_manifest_never_deletes_its_versions(world, tmp_path):
    """Case 4: 12 version directories were deleted as 'left by an interrupted export' when manifest.json was
    missing. Without our marker the directory is refused; with it, the versions stay and the next one is 13."""
    unmarked = tmp_path / "unmarked"
    for version in range(1, 13):
        serving.save_encoder(world["model_a"].query_tower, unmarked / "query_encoder" / str(version)) \
            if version == 1 else shutil.copytree(unmarked / "query_encoder" / "1",
                                                 unmarked / "query_encoder" / str(version))
    before = snapshot(unmarked)
    refused(run("samtone_tf.export", "--model_dir", str(world["a"]), "--out", str(unmarked)),
            "holds no samtone_tf export", "query_encoder")
    assert snapshot(unmarked) == before
    marked = tmp_path / "marked"
    shutil.copytree(world["export"], marked)
    (marked / "manifest.json").unlink()
    for version in range(2, 13):
        shutil.copytree(marked / "query_encoder" / "1", marked / "query_encoder" / str(version))
    result = run("samtone_tf.export", "--model_dir", str(world["a"]), "--out", str(marked))
    assert result.returncode == 0 and "exported version 13" in result.stdout, result.stderr[-2000:]
    assert sorted(int(p.name) for p in (marked / "query_encoder").iterdir()) == list(range(1, 14))


def test_hand_edited_manifests_are_refused_with_one_line(world, tmp_path):
    """Case 5 (model names leading out of the export) and case 9 (a hand-edited versions list)."""
    export = tmp_path / "export"
    shutil.copytree(world["export"], export)
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["models"] = {"../other/query_encoder": manifest["models"]["query_encoder"]}
    (export / "manifest.json").write_text(json.dumps(manifest))
    refused(run("samtone_tf.export", "--check", str(export)), "'models' may name only")
    manifest = json.loads((world["export"] / "manifest.json").read_text())
    manifest["versions"] = ["1", None]
    (export / "manifest.json").write_text(json.dumps(manifest))
    refused(run("samtone_tf.evaluate", "--model", str(export), "--dataset", world["corpus"]),
            "'versions' must be a list of positive integers")


def test_models_config_reads_back_through_tf_servings_parser_whatever_the_serving_root(world, tmp_path):
    """Case 6: a --serving_root holding a quote or a newline made a models.config TF Serving rejects."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    root = '/mnt/"quoted" root/東京\nline'
    out = tmp_path / "export"
    result = run("samtone_tf.export", "--model_dir", str(world["a"]), "--out", str(out), "--serving_root", root)
    assert result.returncode == 0, result.stderr[-2000:]
    config = text_format.Parse((out / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert [c.base_path for c in config.model_config_list.config] == [f"{root}/query_encoder",
                                                                      f"{root}/document_encoder"]


def test_a_damaged_record_and_a_file_outside_the_index_are_refused(world, tmp_path):
    """Case 7: a float damaged before the manifest's checksum was taken went into the index (the record's CRC was
    never checked); an exact index's doc_ids.json was read through a symlink from outside it."""
    damaged = tmp_path / "damaged"
    shutil.copytree(world["embeddings"], damaged)
    shard = damaged / "embeddings-00000-of-00001.tfrecord"
    data = bytearray(shard.read_bytes())
    data[200] ^= 0x40  # a bit inside the first records' floats
    shard.write_bytes(bytes(data))
    manifest = json.loads((damaged / "manifest.json").read_text())
    import hashlib

    manifest["shards"][0]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()  # damaged before the checksum
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    refused(run("samtone_tf.index", "build", "--embeddings", str(damaged), "--out", str(tmp_path / "i"),
                "--kind", "exact"), "embeddings-00000-of-00001.tfrecord: record 1: its bytes fail their CRC")
    assert not (tmp_path / "i").exists()
    index = tmp_path / "index"
    assert run("samtone_tf.index", "build", "--embeddings", str(world["embeddings"]), "--out", str(index),
               "--kind", "exact").returncode == 0
    outside = tmp_path / "elsewhere.json"
    shutil.move(index / "doc_ids.json", outside)
    os.symlink(outside, index / "doc_ids.json")
    refused(run("samtone_tf.evaluate", "--model", str(world["b"]), "--dataset", world["corpus"], "--index_dir",
                str(index), "--out", str(tmp_path / "m.json")), "leads outside the directory")


def test_run_files_and_evaluation_output_of_a_checkpoint_name(world, tmp_path):
    """Case 8: ids with whitespace made an 8-column run file; `evaluate --model NAME` wrote ./NAME/evaluation/, so
    the same command failed the second time (the name then resolved to that directory)."""
    corpus = tmp_path / "spaced"
    shutil.copytree(world["corpus"].partition(":")[2], corpus)
    text = (corpus / "corpus.jsonl").read_text().replace('"d3"', '"d 3"')
    (corpus / "corpus.jsonl").write_text(text)
    line = refused(run("samtone_tf.evaluate", "--model", str(world["a"]), "--dataset", f"beir:{corpus}",
                       "--out", str(tmp_path / "m.json"), "--run_out", str(tmp_path / "x.run")), "'d 3'")
    assert "TREC run file cannot hold" in line and not (tmp_path / "x.run").exists()
    work = tmp_path / "work"
    work.mkdir()
    models = REPOSITORY_ROOT / "tests" / "fixtures"
    for attempt in range(2):
        result = typed("samtone_tf.evaluate", "--model", "tiny-bert", "--dataset", world["corpus"], cwd=work,
                     env={"SAMTONE_MODELS": str(models)})
        assert result.returncode == 0, (attempt, result.stderr[-3000:])
    assert len(list((work / "evaluations" / "tiny-bert").glob("*-test.json"))) == 1
    assert not (work / "tiny-bert").exists()


def test_damaged_exports_and_checkpoints_give_one_line_or_fall_back(world, tmp_path):
    """Case 9: a damaged export in `evaluate` and `mine` was a traceback; a damaged newest checkpoint without
    model.keras stopped `export` and `evaluate` (train falls back past it)."""
    broken = tmp_path / "broken"
    shutil.copytree(world["export"], broken)
    (broken / "query_encoder" / "1" / "saved_model.pb").write_bytes(b"\x00damaged")
    refused(run("samtone_tf.evaluate", "--model", str(broken), "--dataset", world["corpus"], "--out",
                str(tmp_path / "m.json")), "query_encoder/1: the SavedModel cannot be loaded")
    refused(run("samtone_tf.mine", "--model", str(broken), "--dataset", world["corpus"], "--split", "test",
                "--out", str(tmp_path / "mined.jsonl")), "the SavedModel cannot be loaded")
    trained = tmp_path / "run"
    result = typed("samtone_tf.train", "--model", "tiny", "--dataset", world["corpus"], "--train_split", "test",
                 "--model_dir", str(trained), "--eval_datasets", "", "--steps", "4", "--batch_size", "4",
                 "--checkpoint_every", "2", "--no-export", "--no-unique_ids")
    assert result.returncode == 0, result.stderr[-3000:]
    (trained / "model.keras").unlink()
    newest = sorted(trained.glob("checkpoints/ckpt-*.data-*"))[-1]
    newest.write_bytes(newest.read_bytes()[:10])
    exported = run("samtone_tf.export", "--model_dir", str(trained), "--out", str(tmp_path / "e"))
    assert exported.returncode == 0 and "is damaged" in exported.stderr, exported.stderr[-3000:]
    evaluated = run("samtone_tf.evaluate", "--model", str(trained), "--dataset", world["corpus"], "--out",
                    str(tmp_path / "m.json"))
    assert evaluated.returncode == 0 and "is damaged" in evaluated.stderr, evaluated.stderr[-3000:]


def test_a_full_disk_during_export_is_one_line_and_leaves_the_earlier_version(world, tmp_path, monkeypatch, capsys):
    """Case 9: a full disk in `export` was a traceback (ENOSPC raised while a SavedModel was written)."""
    import errno

    from samtone_tf import export as export_command

    out = tmp_path / "export"
    shutil.copytree(world["export"], out)
    before = snapshot(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serving, "save_encoder", full)
    assert export_command.main(["--model_dir", str(world["a"]), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("error:") == 1 and "No space left on device" in error and "Traceback" not in error
    assert snapshot(out) == before


FULL_DISK_TRAINING = """
import sys

import tensorflow as tf

saves = []
original = tf.train.CheckpointManager.save


def save(self, *args, **kwargs):
    saves.append(1)
    if len(saves) == 2:  # the disk fills up at the second checkpoint
        raise tf.errors.ResourceExhaustedError(None, None, "ckpt-4.data-00000-of-00001: No space left on device")
    return original(self, *args, **kwargs)


tf.train.CheckpointManager.save = save
from samtone_tf.train import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_during_training_is_one_line_and_keeps_the_earlier_checkpoint(world, tmp_path):
    """Case 9: a full disk in `train` (TensorFlow's ResourceExhaustedError from a checkpoint write) was a traceback."""
    model_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_TRAINING, "--model", "tiny", "--dataset", world["corpus"], "--train_split",
         "test", "--model_dir", str(model_dir), "--eval_datasets", "", "--steps", "6", "--batch_size", "4",
         "--checkpoint_every", "2", "--no-export", "--no-unique_ids"],
        capture_output=True, text=True, cwd=REPOSITORY_ROOT, env=dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT)),
        timeout=900)
    refused(result, "ResourceExhaustedError", "No space left on device")
    assert sorted(p.name for p in (model_dir / "checkpoints").glob("ckpt-*.index")) == ["ckpt-2.index"]
    resumed = typed("samtone_tf.train", "--model", "tiny", "--dataset", world["corpus"], "--train_split", "test",
                  "--model_dir", str(model_dir), "--eval_datasets", "", "--steps", "6", "--batch_size", "4",
                  "--checkpoint_every", "2", "--no-export", "--no-unique_ids")
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr, resumed.stderr[-2000:]
