"""python -m samtone_tf.export: servable SavedModels of a trained dual encoder.

    python -m samtone_tf.export --model_dir runs/default --out exports/squad [--corpus beir:scifact]

writes, each model version atomically (a hidden temporary directory, then a rename,
so TensorFlow Serving never sees half a version):

    OUT/query_encoder/N/      serving_default(text: string [None]) -> {"embedding": float32 [None, D]}
    OUT/document_encoder/N/   the same for documents (also loadable with hub.KerasLayer)
    OUT/retriever/N/          with --corpus: serving_default(text) -> {"doc_ids": string [None, k],
                              "scores": float32 [None, k]}, exact search in pure TensorFlow ops
    OUT/index/                with --corpus: a ScaNN index (searcher, doc ids, manifest) and
                              index/scann_tf/, the same searcher as a ScaNN TensorFlow-ops SavedModel
    OUT/models.config         TensorFlow Serving model config listing the models
    OUT/manifest.json         versions, dimension, architecture, training configuration, metrics

Consumers must `import tensorflow_text` before loading (the tokenizer's ops live there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import samtone_tf  # noqa: I001  (first: it sets TensorFlow's environment before TensorFlow loads)
import keras
import numpy as np
import tensorflow as tf

from samtone_tf.atomic import atomic_directory, atomic_write_text
from samtone_tf.index import ScannIndex

ENCODERS = ("query_encoder", "document_encoder")


class EncoderModule(tf.Module):
    """A tower as a SavedModel: raw strings [None] -> embeddings [None, D]."""

    def __init__(self, tower):
        super().__init__(name=None)
        self.tower = tower

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def __call__(self, text):
        return self.tower(text, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        return {"embedding": self(text)}


class RetrieverModule(tf.Module):
    """Query text -> top-k document ids and scores by exact search over stored embeddings."""

    def __init__(self, query_tower, embeddings, doc_ids, k):
        super().__init__(name=None)
        self.tower = query_tower
        # Variables, not constants: a large corpus would overflow the 2 GB graph proto.
        self.embeddings = tf.Variable(np.asarray(embeddings, np.float32), trainable=False, name="embeddings")
        self.doc_ids = tf.Variable(np.asarray([str(d) for d in doc_ids], dtype=object), trainable=False,
                                   dtype=tf.string, name="doc_ids")
        self.k = min(int(k), len(doc_ids))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        queries = self.tower(text, training=False)
        scores = tf.matmul(queries, self.embeddings, transpose_b=True)
        top = tf.math.top_k(scores, k=self.k)
        return {"doc_ids": tf.gather(self.doc_ids, top.indices), "scores": top.values}


def write_version(base, version, write, overwrite=False):
    """Writes base/<version>/ atomically with `write(staging_dir)`; refuses to replace an
    existing version unless `overwrite`."""
    target = Path(base) / str(version)
    with atomic_directory(target, overwrite=overwrite) as staging:
        write(staging)
    return target


def save_encoder(tower, directory):
    module = EncoderModule(tower)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})


def save_retriever(query_tower, embeddings, doc_ids, k, directory):
    module = RetrieverModule(query_tower, embeddings, doc_ids, k)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})


def saved_model_op_types(directory):
    """The set of op types a SavedModel's graph and functions use (what a server must provide)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(directory) / "saved_model.pb").read_bytes())
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def load_trained_model(model_dir):
    """The trained DualEncoder of a training model_dir: model.keras, else the latest checkpoint."""
    import samtone_tf.towers  # noqa: F401  (registers the classes model.keras refers to)

    model_dir = Path(model_dir)
    if (model_dir / "model.keras").is_file():
        return keras.saving.load_model(model_dir / "model.keras")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: neither model.keras nor config.json (not a training model_dir)")
    from samtone_tf.train import build_model

    model = build_model(json.loads(config_path.read_text()))
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"{model_dir}: no checkpoint to export")
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    return model


def next_version(out):
    versions = [int(p.name) for name in ENCODERS for p in (Path(out) / name).glob("*") if p.name.isdigit()]
    return max(versions, default=0) + 1


def serving_config(out, names):
    entries = "".join(
        f'  config {{\n    name: "{name}"\n    base_path: "{(Path(out) / name).resolve()}"\n'
        f'    model_platform: "tensorflow"\n  }}\n'
        for name in names
    )
    return f"model_config_list {{\n{entries}}}\n"


def export(model, out, version=None, corpus=None, k=10, overwrite=False, training_config=None, metrics=None,
           batch_size=64, verbose=True):
    """Exports `model` (a DualEncoder) under `out`; `corpus` is RetrievalData or None. -> the manifest."""
    out = Path(out)
    version = version or next_version(out)
    say = print if verbose else (lambda *a, **k: None)
    written = {}
    for name, tower in (("query_encoder", model.query_tower), ("document_encoder", model.document_tower)):
        written[name] = write_version(out / name, version, lambda d, t=tower: save_encoder(t, d), overwrite)
        say(f"wrote {written[name]}")
    manifest = {
        "samtone_tf_version": samtone_tf.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "version": version,
        "dimension": model.query_tower.output_dim,
        "architecture": model.architecture,
        "query_max_length": model.query_max_length,
        "document_max_length": model.document_max_length,
        "models": {name: {"path": f"{name}/{version}", "signature": "serving_default",
                          "inputs": {"text": "string [None]"},
                          "outputs": {"embedding": f"float32 [None, {model.query_tower.output_dim}]"}}
                   for name in ENCODERS},
        "training_config": training_config,
        "metrics": metrics,
    }
    if corpus is not None:
        doc_ids = list(corpus.corpus)
        say(f"encoding the corpus {corpus.name}: {len(doc_ids)} documents")
        embeddings = model.encode_documents([corpus.document_text(d) for d in doc_ids], batch_size=batch_size,
                                            verbose=verbose)
        written["retriever"] = write_version(
            out / "retriever", version,
            lambda d: save_retriever(model.query_tower, embeddings, doc_ids, k, d), overwrite)
        say(f"wrote {written['retriever']}")
        _write_index(out / "index", embeddings, doc_ids, k, overwrite)
        say(f"wrote {out / 'index'}")
        manifest["models"]["retriever"] = {
            "path": f"retriever/{version}", "signature": "serving_default", "inputs": {"text": "string [None]"},
            "outputs": {"doc_ids": f"string [None, {min(k, len(doc_ids))}]",
                        "scores": f"float32 [None, {min(k, len(doc_ids))}]"}}
        manifest["corpus"] = {"name": corpus.name, "documents": len(doc_ids), "index": "index"}
    atomic_write_text(out / "models.config", serving_config(out, list(manifest["models"])))
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


def _write_index(directory, embeddings, doc_ids, k, overwrite):
    with atomic_directory(directory, overwrite=overwrite) as staging:
        index = ScannIndex(embeddings, doc_ids, k=k)
        index.write_files(staging)
        tf.saved_model.save(index.tensorflow_searcher(embeddings).serialize_to_module(), str(staging / "scann_tf"))


def _last_evaluation(model_dir):
    path = Path(model_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    evaluations = [json.loads(line) for line in path.read_text().splitlines() if '"evaluation"' in line]
    return evaluations[-1]["evaluation"] if evaluations else None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m samtone_tf.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a training model_dir (model.keras or checkpoints)")
    parser.add_argument("--out", required=True, help="the export directory")
    parser.add_argument("--corpus", default=None,
                        help="a dataset whose corpus to index and serve (e.g. beir:scifact); default: none")
    parser.add_argument("--corpus_split", default=None, help="the split of --corpus (default: its test split)")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--version", type=int, default=None, help="default: one more than the newest")
    parser.add_argument("--k", type=int, default=10, help="documents the retriever returns per query")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        model = load_trained_model(args.model_dir)
        corpus = None
        if args.corpus:
            from samtone_tf.data.datasets import load_evaluation

            corpus = load_evaluation(args.corpus, args.corpus_split, args.data_dir)
        config_path = Path(args.model_dir) / "config.json"
        training_config = json.loads(config_path.read_text()) if config_path.is_file() else None
        manifest = export(model, args.out, args.version, corpus, args.k, args.overwrite, training_config,
                          _last_evaluation(args.model_dir), args.batch_size)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported version {manifest['version']} of {', '.join(manifest['models'])} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
