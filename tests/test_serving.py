"""Exports on the paths their users take: TF Serving's TF1 loader, `export --check`, versions that are
whole or absent, readers that follow the manifest, models.config for a server container."""

import json
import os
import stat
import numpy as np
import pytest
import tensorflow as tf

from samtone_tf import serving
from samtone_tf.data.records import RetrievalData
from samtone_tf.model.fingerprint import tower_fingerprint
from samtone_tf.model.towers import tiny_dual_encoder
from samtone_tf.options import ARCHITECTURES
from samtone_tf.serving import ExportedEncoder, check_export, export, run_like_tf_serving
from tests.helpers import TINY_VOCABULARY, command_in_process

# Trains beyond a few steps, exports SavedModels or starts subprocesses: out of the fast loop.
pytestmark = pytest.mark.slow

TEXTS = ["who sat on the mat", "The Normans were in Normandy.", "", "a dog, a cat; é ü", "x " * 200]


def small_corpus(size=30):
    words = "the cat dog sat on mat who what where when is was of and to in".split()
    rng = np.random.default_rng(0)
    corpus = {f"d{i}": ("", " ".join(rng.choice(words, 6))) for i in range(size)}
    return RetrievalData("small", "test", corpus, {"q0": "who sat"}, {"q0": {"d0": 1}})


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_serves_under_tf_servings_loader(architecture, tmp_path):
    model = tiny_dual_encoder(TINY_VOCABULARY, architecture, projection_dim=24)
    export(model, tmp_path / "out", corpus=small_corpus() if architecture == "ade_spl" else None, k=5,
           verbose=False)
    texts = tf.constant(TEXTS)
    for name, tower in (("query_encoder", model.query_tower), ("document_encoder", model.document_tower)):
        served = run_like_tf_serving(tmp_path / "out" / name / "1", TEXTS)
        assert served["embedding"].shape == (len(TEXTS), 24)
        np.testing.assert_allclose(served["embedding"], tower(texts), atol=1e-5)
    if architecture == "ade_spl":
        served = run_like_tf_serving(tmp_path / "out" / "retriever" / "1", TEXTS)
        reference = serving.run_tf2(tmp_path / "out" / "retriever" / "1", TEXTS)
        np.testing.assert_allclose(served["scores"], reference["scores"], atol=1e-5)
        assert (served["doc_ids"] == reference["doc_ids"]).all()
    assert all(problem is None for _, _, problem in check_export(tmp_path / "out"))


def test_export_check_command_reports_each_model(tmp_path):
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    out = tmp_path / "out"
    export(model, out, corpus=small_corpus(), k=3, verbose=False)
    checked = command_in_process("samtone_tf.export", "--check", out)  # the command's main; test_served_codes types it
    assert checked.returncode == 0, checked.stderr[-3000:]
    for name in ("query_encoder", "document_encoder", "retriever"):
        assert any(line.startswith(name) and " OK " in line for line in checked.stdout.splitlines()), checked.stdout
    assert "3 of 3 models load and serve as under TensorFlow Serving" in checked.stdout
    # A model whose variables are damaged fails the check, by name.
    data = next((out / "document_encoder" / "1" / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    damaged = command_in_process("samtone_tf.export", "--check", out)
    assert damaged.returncode == 1
    assert any(line.startswith("document_encoder") and "FAILED" in line for line in damaged.stdout.splitlines())
    assert any(line.startswith("query_encoder") and " OK " in line for line in damaged.stdout.splitlines())


def test_models_config_is_portable_and_pinned(tmp_path):
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    out = tmp_path / "out"
    export(model, out, corpus=small_corpus(), k=3, verbose=False)
    config = (out / "models.config").read_text()
    for name in ("query_encoder", "document_encoder", "retriever"):
        assert f'base_path: "/models/{name}"' in config
    assert str(tmp_path) not in config
    assert config.count("model_version_policy { specific { versions: 1 } }") == 3
    export(model, out, verbose=False, serving_root="/srv/exports/run1/")
    config = (out / "models.config").read_text()
    assert 'base_path: "/srv/exports/run1/query_encoder"' in config and "versions: 2" in config
    assert "retriever" not in config  # version 2 has no corpus: the config names what version 2 serves
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["versions"] == [1, 2]
    assert manifest["models"]["query_encoder"]["path"] == "query_encoder/2"
    # Read back by TF Serving's own parser, as the server reads it.
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    parsed = text_format.Parse(config, model_server_config_pb2.ModelServerConfig()).model_config_list.config
    assert [(c.name, c.base_path, list(c.model_version_policy.specific.versions)) for c in parsed] == [
        (name, f"/srv/exports/run1/{name}", [2]) for name in ("query_encoder", "document_encoder")]


@pytest.mark.parametrize("root", ['/a "quoted" root', "/with\nnewline", "/東京/é ü ß", "/back\\slash\tand tab",
                                  "/it's"])
def test_models_config_reads_back_through_tf_serving_parser_for_any_root(root):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = serving.serving_config(["query_encoder", "retriever"], 3, root)
    parsed = text_format.Parse(config, model_server_config_pb2.ModelServerConfig()).model_config_list.config
    assert [c.base_path for c in parsed] == [f"{root}/query_encoder", f"{root}/retriever"]
    assert [list(c.model_version_policy.specific.versions) for c in parsed] == [[3], [3]]


def test_two_versions_with_a_corpus_and_readable_by_others(tmp_path):
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    out = tmp_path / "out"
    first = export(model, out, corpus=small_corpus(), k=3, verbose=False)
    second = export(model, out, corpus=small_corpus(40), k=3, verbose=False)
    assert (first["version"], second["version"]) == (1, 2)
    for version in ("1", "2"):
        for name in ("query_encoder", "document_encoder", "retriever", "index"):
            directory = out / name / version
            assert directory.is_dir(), directory
            assert stat.S_IMODE(directory.stat().st_mode) & 0o005 == 0o005, directory  # others may read
    provenance = second["corpus"].pop("provenance")
    assert second["corpus"] == {"name": "small", "documents": 40, "index": "index/2"}
    # The corpus embeddings' provenance: this model's document tower, these 40 documents (`samtone_tf.provenance`).
    assert provenance["document_tower"] == second["provenance"]["document_encoder"] == tower_fingerprint(
        model.document_tower)
    assert provenance == json.loads((out / "index" / "2" / "manifest.json").read_text())["provenance"]
    from samtone_tf.index.search import ScannIndex

    assert len(ScannIndex.load(out / "index" / "2")) == 40 and len(ScannIndex.load(out / "index" / "1")) == 30


def _snapshot(out):
    return {str(p.relative_to(out)): (p.read_bytes() if p.is_file() else None) for p in sorted(out.rglob("*"))}


def _fail(*_, **__):
    raise OSError("injected failure")


STAGES = {
    "query encoder": lambda mp, calls: mp.setattr(serving, "save_encoder", _fail),
    "document encoder": lambda mp, calls: mp.setattr(serving, "save_encoder", _nth(serving.save_encoder, 2, calls)),
    "retriever": lambda mp, calls: mp.setattr(serving, "save_retriever", _fail),
    "index": lambda mp, calls: mp.setattr(serving, "save_index", _fail),
    "first rename": lambda mp, calls: mp.setattr(os, "rename", _nth(os.rename, 1, calls)),
    "third rename": lambda mp, calls: mp.setattr(os, "rename", _nth(os.rename, 3, calls)),
    "models.config": lambda mp, calls: mp.setattr(serving, "atomic_write_text",
                                                  _named(serving.atomic_write_text, "models.config")),
    "manifest": lambda mp, calls: mp.setattr(serving, "atomic_write_text",
                                             _named(serving.atomic_write_text, "manifest.json")),
}


def _nth(function, n, calls):
    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise OSError("injected failure")
        return function(*args, **kwargs)
    return wrapper


def _named(function, filename):
    def wrapper(path, text):
        if os.path.basename(path) == filename:
            raise OSError("injected failure")
        return function(path, text)
    return wrapper


@pytest.fixture(scope="module")
def version_one(tmp_path_factory):
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    out = tmp_path_factory.mktemp("export") / "out"
    export(model, out, corpus=small_corpus(), k=3, verbose=False)
    return model, out


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_failure_at_any_stage_leaves_version_one_whole(stage, version_one, tmp_path, monkeypatch):
    import shutil

    model, original = version_one
    out = tmp_path / "out"
    shutil.copytree(original, out)
    before = _snapshot(out)
    calls = []
    with monkeypatch.context() as patch:
        STAGES[stage](patch, calls)
        with pytest.raises(OSError, match="injected failure"):
            export(model, out, corpus=small_corpus(), k=3, verbose=False)
    assert _snapshot(out) == before, stage
    assert not [p for p in out.rglob("2")], stage
    assert ExportedEncoder(out).version == 1


@pytest.mark.parametrize("killed_after", ["the first rename", "models.config"])
def test_leftovers_of_a_killed_export_are_undone_or_finished_from_its_journal_and_never_read(
        version_one, tmp_path, monkeypatch, killed_after):
    import shutil

    model, original = version_one
    out = tmp_path / "out"
    shutil.copytree(original, out)
    before = _snapshot(out)
    other = tiny_dual_encoder(TINY_VOCABULARY, "ade", seed=7)
    # A kill (no chance to put anything back) after the first rename of a commit, or between models.config and
    # the manifest: the commit's journal stays.
    with monkeypatch.context() as patch:
        patch.setattr(serving, "_undo_commit", lambda *args: None)
        if killed_after == "the first rename":
            patch.setattr(os, "rename", _nth(os.rename, 2, []))
        else:
            STAGES["manifest"](patch, [])
        (out / ".incomplete-2-x" / "document_encoder").mkdir(parents=True)
        with pytest.raises(OSError, match="injected failure"):
            export(other, out, verbose=False)
    assert (out / ".commit.json").is_file()
    encoder = ExportedEncoder(out)
    assert encoder.version == 1
    np.testing.assert_allclose(encoder.encode_queries(TEXTS, verbose=False),
                               model.encode_queries(TEXTS, verbose=False), atol=1e-5)
    # The next export (under the lock) undoes the interrupted commit first: the directory is version 1's again.
    serving.recover_interrupted_commit(out, say=lambda *a: None)
    serving.remove_leftovers(out, say=lambda *a: None)
    assert _snapshot(out) == before
    manifest = export(model, out, verbose=False)
    assert manifest["version"] == 2 and not list(out.glob(".incomplete-*")) and not (out / ".commit.json").exists()
    np.testing.assert_allclose(run_like_tf_serving(out / "query_encoder" / "2", TEXTS)["embedding"],
                               model.query_tower(tf.constant(TEXTS)), atol=1e-5)


def test_an_export_without_manifest_is_not_read(tmp_path):
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    serving.save_encoder(model.query_tower, tmp_path / "query_encoder" / "1")
    serving.save_encoder(model.document_tower, tmp_path / "document_encoder" / "1")
    with pytest.raises(FileNotFoundError, match="no manifest.json, so no complete export"):
        ExportedEncoder(tmp_path)


def test_export_validates_before_writing(tmp_path):
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    for bad in ({"version": 0}, {"version": -1}, {"k": 0}):
        with pytest.raises(ValueError):
            export(model, tmp_path / "out", verbose=False, **bad)
    empty = RetrievalData("empty", "test", {}, {}, {})
    with pytest.raises(ValueError, match="no documents"):
        export(model, tmp_path / "out", corpus=empty, verbose=False)
    assert not [p for p in (tmp_path / "out").rglob("*")]
    result = command_in_process("samtone_tf.export", "--model_dir", tmp_path, "--out", tmp_path / "o", "--version", "-1")
    assert result.returncode == 2 and "--version: must be at least 1; got -1" in result.stderr
    assert "Traceback" not in result.stderr
