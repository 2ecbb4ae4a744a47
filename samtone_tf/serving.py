"""Servable SavedModels of a dual encoder: writing an export, checking it, reading it back.

An export directory OUT holds, for each version N:

    OUT/query_encoder/N/      serving_default(text: string [None]) -> {"embedding": float32 [None, D]}
    OUT/document_encoder/N/   the same for documents (also a hub.KerasLayer: callable on strings)
    OUT/retriever/N/          with a corpus: serving_default(text) -> {"doc_ids": string [None, k],
                              "scores": float32 [None, k]}, exact search in pure TensorFlow ops
    OUT/index/N/              with a corpus: a ScaNN index of the same embeddings (ScannIndex.load)
                              and index/N/scann_tf/, the searcher as a ScaNN TensorFlow-ops SavedModel
    OUT/models.config         TensorFlow Serving's model config, each model pinned to version N
    OUT/manifest.json         the commit record: the version set, written last

A version is whole or absent: everything is written into one hidden staging directory first, then
the version directories are renamed into place, then models.config and, last, manifest.json. Readers
(`ExportedEncoder`, `check_export`) take the version the manifest names, so they never pair one
version's queries with another's documents, whatever a killed export left behind; the next export
removes such leftovers.

Every SavedModel loads the way TensorFlow Serving loads it (a TF1 session, the "serve" tag, the
saver's restore op) as well as with `tf.saved_model.load` and `hub.KerasLayer`. Consumers must
`import tensorflow_text` first (the tokenizer's ops live there; TF Serving links them).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf

from samtone_tf.atomic import atomic_write_text, readable_mode
from samtone_tf.index.partitioned import partitioned_top_k
from samtone_tf.locations import is_inside
from samtone_tf.model.fingerprint import saved_model_fingerprint, tower_fingerprint
from samtone_tf.ownership import claim, require_owned
from samtone_tf.provenance import corpus_fingerprint, short
from samtone_tf.training.run_dir import RunLock
from samtone_tf.version import __version__

ENCODERS = ("query_encoder", "document_encoder")
RETRIEVER = "retriever"
INDEX = "index"
MANIFEST = "manifest.json"
MODELS_CONFIG = "models.config"
COMMIT_JOURNAL = ".commit.json"
STAGING_PREFIX = ".incomplete-"
DEFAULT_SERVING_ROOT = "/models"
SAMPLE_TEXTS = ("what is the capital of france", "The Normans gave their name to Normandy.", "",
                "a dog, a cat; é ü ß 東京")

_TEXT = tf.TensorSpec([None], tf.string, name="text")


class _TowerModule(tf.Module):
    """Holds a Keras tower for saving: its tf.Variables and lookup tables, not the Keras objects.

    Keras 3 variables wrap a tf.Variable; when the wrappers are saved, tf.saved_model writes a
    second variable for each that TensorFlow Serving's TF1 loader never restores ("Could not find
    variable ...", keras-team/keras#19274). Tracking the tf.Variables themselves, as
    keras.export.ExportArchive does, gives one variable each, restored by every loader.
    """

    def __init__(self, tower):
        super().__init__()
        self.tower_variables = [variable.value for variable in tower.variables]
        self.tower_tables = _lookup_tables(tower)
        # A bound method is not trackable: the Keras layer stays out of the SavedModel's objects.
        self._tower_call = tower.__call__

    def _encode(self, text):
        return self._tower_call(text, training=False)


class EncoderModule(_TowerModule):
    """A tower as a SavedModel: raw strings [None] -> embeddings [None, D]; `prefix(text, dims)` the first `dims`
    re-normalised (a signature `dims_<dims>` per exported prefix)."""

    def prefix_signature(self, dims):
        @tf.function(input_signature=[_TEXT])
        def serve_prefix(text):
            return {"embedding": tf.math.l2_normalize(self._encode(text)[:, :dims], axis=1)}

        return serve_prefix

    @tf.function(input_signature=[_TEXT])
    def __call__(self, text):
        return self._encode(text)

    @tf.function(input_signature=[_TEXT])
    def serve(self, text):
        return {"embedding": self._encode(text)}


class _SearchingModule(_TowerModule):
    """A retriever whose `search` maps query embeddings [Q, D] to (rows [Q, k], scores [Q, k]) and whose variable
    `doc_ids` names the rows: `serve` encodes the query text, searches and names what it found."""

    def search(self, queries):
        raise NotImplementedError

    @tf.function(input_signature=[_TEXT])
    def serve(self, text):
        rows, scores = self.search(self._encode(text))
        return {"doc_ids": tf.gather(self.doc_ids, rows), "scores": scores}


class RetrieverModule(_SearchingModule):
    """Query text -> top-k document ids and scores by exact search over stored embeddings."""

    def __init__(self, query_tower, embeddings, doc_ids, k):
        super().__init__(query_tower)
        # Variables, not constants: a large corpus would overflow the 2 GB graph proto.
        self.embeddings = tf.Variable(np.asarray(embeddings, np.float32), trainable=False, name="embeddings")
        self.doc_ids = tf.Variable(np.asarray([str(d) for d in doc_ids], dtype=object), trainable=False,
                                   dtype=tf.string, name="doc_ids")
        self.k = min(int(k), len(doc_ids))

    def search(self, queries):
        """Query embeddings [Q, D] -> (rows [Q, k], scores [Q, k]): what `serve` runs after encoding."""
        top = tf.math.top_k(tf.matmul(queries, self.embeddings, transpose_b=True), k=self.k)
        return top.indices, top.values


class PartitionedRetrieverModule(_TowerModule):
    """Query text -> top-k document ids and scores by partitioned search (`samtone_tf.index.partitioned`): the
    `probes` nearest k-means partitions searched exactly, in TensorFlow ops only (TF Serving runs it)."""

    def __init__(self, query_tower, partitions, doc_ids, probes, k):
        super().__init__(query_tower)
        sorted_ids = np.asarray([str(doc_ids[row]) for row in partitions.rows], dtype=object)
        self.centroids = tf.Variable(partitions.centroids, trainable=False, name="centroids")
        self.embeddings = tf.Variable(partitions.embeddings, trainable=False, name="embeddings")
        self.offsets = tf.Variable(partitions.offsets, trainable=False, name="offsets")
        self.doc_ids = tf.Variable(sorted_ids, trainable=False, dtype=tf.string, name="doc_ids")
        self.probes = int(probes)
        self.k = min(int(k), len(sorted_ids))

    @tf.function(input_signature=[_TEXT])
    def serve(self, text):
        scores, positions = partitioned_top_k(self._encode(text), self.centroids, self.embeddings, self.offsets,
                                              self.probes, self.k)
        ids = tf.gather(self.doc_ids, tf.maximum(positions, 0))
        return {"doc_ids": tf.where(positions >= 0, ids, tf.constant("")), "scores": scores}


class QuantizedRetrieverModule(_SearchingModule):
    """Query text -> top-k document ids and scores over cheaper corpus codes (`index.quantized.QuantizedIndex`,
    the same ranking): a prefix of `dims` dimensions re-normalised, stored as float32, int8 codes (per-dimension
    ranges calibrated on the corpus; scored as the float query against the decoded codes) or binary codes (signs in
    64-bit words; Hamming distance by XOR and population count, one query at a time); with `rescore`, the best
    `rescore` by the codes re-ranked by the float32 prefix. TensorFlow core ops only: stock TF Serving runs it.

    Binary codes are stored word by word (one int64 variable [N] per 64 dimensions): each op then runs over one long
    contiguous vector, and the words' counts are summed elementwise, where an [N, words] matrix made TensorFlow
    reduce rows of 6 (1.5-2x slower at 1M documents in a micro-benchmark)."""

    def __init__(self, query_tower, index, k):
        super().__init__(query_tower)
        self.dims, self.precision = index.dims, index.precision
        self.rescore = min(index.rescore, len(index)) if index.rescore else None
        self.k = min(int(k), len(index))
        self.doc_ids = tf.Variable(np.asarray([str(d) for d in index.doc_ids], dtype=object), trainable=False,
                                   dtype=tf.string, name="doc_ids")
        if self.precision == "binary":
            packed = index.codes  # uint8 [N, ceil(dims / 8)]
            word_count = -(-packed.shape[1] // 8)
            padded = np.zeros((packed.shape[0], word_count * 8), np.uint8)
            padded[:, :packed.shape[1]] = packed
            words = padded.view(np.int64)  # [N, words], as numpy's .view(int64) reads the packed bytes
            self.code_words = [tf.Variable(np.ascontiguousarray(words[:, w]), trainable=False, name=f"codes_{w}")
                               for w in range(words.shape[1])]
        else:
            self.codes = tf.Variable(index.codes, trainable=False, name="codes")
        if self.precision == "int8":
            self.low = tf.Variable(index.low, trainable=False, name="low")
            self.step = tf.Variable(index.step, trainable=False, name="step")
        if self.rescore or self.precision == "float32":
            # Kept only where it is read: the float32 prefix for rescoring (the codes themselves for float32).
            self.prefix = self.codes if self.precision == "float32" else tf.Variable(
                index.prefix, trainable=False, name="prefix")

    def _code_scores(self, queries):
        """[Q, N] scores of the prefix `queries` [Q, dims]: float32, or for binary codes int32 -Hamming distances."""
        if self.precision == "float32":
            return tf.matmul(queries, self.codes, transpose_b=True)
        if self.precision == "int8":
            decoded = tf.cast(self.codes, tf.float32) + 128.0
            return tf.linalg.matvec(queries, self.low)[:, None] + tf.matmul(queries * self.step, decoded,
                                                                           transpose_b=True)
        bits = tf.cast(queries > 0, tf.int32)
        bytes_ = len(self.code_words) * 8
        bits = tf.pad(bits, [[0, 0], [0, bytes_ * 8 - self.dims]])
        weights = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], tf.int32)  # np.packbits' order: the first bit high
        packed = tf.cast(tf.reduce_sum(tf.reshape(bits, [-1, bytes_, 8]) * weights, axis=2), tf.uint8)
        query_words = tf.bitcast(tf.reshape(packed, [-1, bytes_ // 8, 8]), tf.int64)  # as numpy's .view(int64)

        def negative_distances(word):  # one query: [words] -> [N]
            counts = [tf.cast(tf.raw_ops.PopulationCount(x=tf.bitwise.bitwise_xor(codes, word[w])), tf.int32)
                      for w, codes in enumerate(self.code_words)]
            return -tf.math.add_n(counts)

        return tf.map_fn(negative_distances, query_words, fn_output_signature=tf.TensorSpec([None], tf.int32))

    def search(self, queries):
        """Full-dimension query embeddings [Q, D] -> (rows [Q, k], scores [Q, k]): what `serve` runs after
        encoding."""
        queries = tf.math.l2_normalize(queries[:, :self.dims], axis=1)
        scores = self._code_scores(queries)
        if self.rescore:
            shortlist = tf.math.top_k(scores, k=self.rescore).indices
            exact = tf.einsum("qd,qkd->qk", queries, tf.gather(self.prefix, shortlist))
            top = tf.math.top_k(exact, k=self.k)
            return tf.gather(shortlist, top.indices, batch_dims=1), top.values
        top = tf.math.top_k(scores, k=self.k)
        return top.indices, tf.cast(top.values, tf.float32)


def _lookup_tables(tower):
    tokenizer = getattr(tower, "tokenizer", None)
    table = getattr(tokenizer, "lookup_table", None)
    return [table] if table is not None else []


def save_encoder(tower, directory, prefixes=()):
    """The encoder SavedModel: serving_default, and a signature `dims_D` for each prefix D of `prefixes`."""
    module = EncoderModule(tower)
    signatures = {"serving_default": module.serve}
    for dims in prefixes:
        if dims != tower.output_dim:
            signatures[f"dims_{dims}"] = module.prefix_signature(int(dims))
    tf.saved_model.save(module, str(directory), signatures=signatures)


def save_retriever(query_tower, embeddings, doc_ids, k, directory):
    module = RetrieverModule(query_tower, embeddings, doc_ids, k)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})


def save_partitioned_retriever(query_tower, partitions, doc_ids, probes, k, directory):
    module = PartitionedRetrieverModule(query_tower, partitions, doc_ids, probes, k)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})



def save_quantized_retriever(query_tower, index, k, directory):
    """The retriever SavedModel over `index` (a QuantizedIndex of the corpus's embeddings)."""
    module = QuantizedRetrieverModule(query_tower, index, k)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})

def save_index(embeddings, doc_ids, k, directory, index=None):
    """The ScaNN index of `embeddings` (or the prebuilt, e.g. tuned, `index` of them) and its TF-ops searcher."""
    from samtone_tf.index.search import ScannIndex

    directory = Path(directory)
    directory.mkdir(exist_ok=True)
    index = index if index is not None else ScannIndex(embeddings, doc_ids, k=k)
    index.write_files(directory)
    tf.saved_model.save(index.tensorflow_searcher(embeddings).serialize_to_module(), str(directory / "scann_tf"))


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


# --- the export ---------------------------------------------------------------------------------


def read_manifest(out):
    """The manifest of the export at `out` (a local directory, or a URL tf.io.gfile reads such as gs://...),
    or None when there is none (nothing committed)."""
    path = tf.io.gfile.join(str(out), MANIFEST)
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a valid manifest ({error})") from None
    if not isinstance(manifest, dict) or not _positive_int(manifest.get("version")):
        raise ValueError(f"{path}: not a samtone_tf export manifest (no positive integer 'version')")
    versions = manifest.get("versions", [])
    if not isinstance(versions, list) or not all(_positive_int(v) for v in versions):
        raise ValueError(f"{path}: 'versions' must be a list of positive integers; got {versions!r:.200}")
    models = manifest.get("models", {})
    if not isinstance(models, dict) or not set(models) <= set(ENCODERS + (RETRIEVER,)):
        raise ValueError(f"{path}: 'models' may name only {', '.join(ENCODERS + (RETRIEVER,))} (each a directory of "
                         f"the export); got {sorted(models) if isinstance(models, dict) else models!r:.200}")
    return manifest


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def committed_versions(manifest):
    if manifest is None:
        return []
    return sorted(set(manifest.get("versions", [])) | {manifest["version"]})


def serving_config(names, version, serving_root=DEFAULT_SERVING_ROOT):
    """TensorFlow Serving's model config: each model under `serving_root`, pinned to `version`.

    The pin makes models.config part of the commit: a server polling it switches every model
    to the new version together, and never serves a version directory no manifest names.
    """
    root = str(serving_root).rstrip("/") or "/"
    entries = "".join(
        f'  config {{\n    name: {text_format_string(name)}\n    base_path: {text_format_string(f"{root}/{name}")}\n'
        f'    model_platform: "tensorflow"\n'
        f"    model_version_policy {{ specific {{ versions: {int(version)} }} }}\n  }}\n"
        for name in names
    )
    return f"model_config_list {{\n{entries}}}\n"


def text_format_string(text):
    """`text` as a protocol-buffer text-format string literal, escaped as protobuf's own printer escapes it (quotes,
    backslashes, control characters; every byte of UTF-8 beyond ASCII as octal), so TF Serving's config parser reads
    back exactly `text` whatever a path holds (quotes, newlines, unicode)."""
    escapes = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord('"'): '\\"', ord("'"): "\\'",
               ord("\\"): "\\\\"}
    out = []
    for byte in str(text).encode("utf-8"):
        if byte in escapes:
            out.append(escapes[byte])
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def export(model, out, version=None, corpus=None, k=10, overwrite=False, training_config=None, metrics=None,
           batch_size=64, verbose=True, serving_root=DEFAULT_SERVING_ROOT, target_recall=None, retriever="exact",
           corpus_embeddings=None, prebuilt_index=None, source=None, codes=None):
    """Exports `model` (a DualEncoder) as version `version` (default: the next) under `out`.

    `corpus` (RetrievalData or None) adds a retriever and a ScaNN index of its documents; with
    `target_recall` the index is the fastest reaching recall@k >= target_recall on the corpus's queries
    (or, without queries, documents standing in for them): `samtone_tf.index.tuning.tune_scann`.
    `retriever` "partitioned" makes the retriever SavedModel search k-means partitions instead of every
    document, in the partitioning (of those `index.tuning.tune_partitions` tries) that is fastest at
    `target_recall` (default 0.95) on those queries, probing the fewest partitions that reach it.
    `corpus_embeddings` (doc_ids, float32 [N, D]), e.g. of a prebuilt index, stand for the corpus's documents
    instead of encoding it again, and a prebuilt `ScannIndex` of them (`prebuilt_index`) becomes index/N. The
    version is whole or absent: on any failure the previous version, the manifest and
    models.config are left as they were. `source` (what the model was loaded from: a training model_dir, a
    .keras file, a pretrained checkpoint) is recorded in the manifest. `codes` ({"dims", "precision", "rescore"},
    as `index.quantized.QuantizedIndex` takes them) makes the retriever search cheaper codes of the corpus
    (`QuantizedRetrieverModule`), and gives each encoder a signature `dims_D` for a prefix `dims` D.
    -> the manifest (dict).
    """
    out = Path(out)
    say = print if verbose else (lambda *a, **kw: None)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"version must be a positive integer; got {version!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if corpus is not None and not corpus.corpus:
        raise ValueError(f"the corpus {corpus.name} has no documents")
    if retriever not in ("exact", "partitioned"):
        raise ValueError(f"retriever must be 'exact' or 'partitioned'; got {retriever!r}")
    if codes is not None and (corpus is None or retriever != "exact"):
        raise ValueError("codes (--dims, --precision, --rescore) are for the exact retriever of a --corpus")
    if target_recall is not None and (corpus is None or not 0.0 < float(target_recall) <= 1.0):
        raise ValueError(f"target_recall {target_recall}: needs a corpus and a value in (0, 1]")
    claim(out, "export", recognise=_is_export_of_an_earlier_version)
    with RunLock(out, say=say, holder="export", advice="export to another --out"):
        return _export_locked(model, out, version, corpus, k, overwrite, training_config, metrics, batch_size, say,
                              verbose, serving_root, target_recall, retriever, corpus_embeddings, prebuilt_index,
                              source, codes)


def _export_locked(model, out, version, corpus, k, overwrite, training_config, metrics, batch_size, say, verbose,
                   serving_root, target_recall, retriever, corpus_embeddings, prebuilt_index, source=None,
                   codes=None):
    """`export`'s work, with the export directory claimed and locked (one writer)."""
    recover_interrupted_commit(out, say)
    previous = read_manifest(out)
    remove_leftovers(out, say)
    version = version or next_version(out, previous)
    names = ENCODERS + ((RETRIEVER, INDEX) if corpus is not None else ())
    existing = [str(out / name / str(version)) for name in names if (out / name / str(version)).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist; pass --overwrite to replace version {version}")

    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=out))
    try:
        prefixes = [codes["dims"]] if codes and codes.get("dims") else []
        for name, tower in (("query_encoder", model.query_tower), ("document_encoder", model.document_tower)):
            save_encoder(tower, staging / name, prefixes)
            say(f"wrote {name} version {version}")
        manifest = _manifest(model, version, committed_versions(previous), training_config, metrics)
        if source is not None:
            manifest["source"] = source
        if corpus is not None:
            _export_corpus(model, corpus, version, k, staging, manifest, batch_size, say, verbose, target_recall,
                           retriever, corpus_embeddings, prebuilt_index, codes)
        serving_names = [name for name in names if name != INDEX]
        manifest["serving_root"] = str(serving_root)
        _commit(out, staging, names, version, serving_config(serving_names, version, serving_root),
                json.dumps(manifest, indent=1))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _export_corpus(model, corpus, version, k, staging, manifest, batch_size, say, verbose, target_recall, retriever,
                   corpus_embeddings, prebuilt_index, codes=None):
    """`export`'s corpus branch: the retriever SavedModel and the ScaNN index of the corpus's embeddings (encoded
    here unless `corpus_embeddings` are given), written into `staging`; their entries added to `manifest`."""
    if corpus_embeddings is not None:
        doc_ids, embeddings = list(corpus_embeddings[0]), np.asarray(corpus_embeddings[1], np.float32)
        say(f"the corpus {corpus.name}: {len(doc_ids)} documents embedded beforehand")
    else:
        doc_ids = list(corpus.corpus)
        say(f"encoding the corpus {corpus.name}: {len(doc_ids)} documents")
        embeddings = model.encode_documents([corpus.document_text(d) for d in doc_ids],
                                            batch_size=batch_size, verbose=verbose)
    queries = excluded = None
    if target_recall is not None or retriever == "partitioned":
        from samtone_tf.index.tuning import tuning_queries

        real = (model.encode_queries(list(corpus.queries.values()), batch_size=batch_size, verbose=verbose)
                if corpus.queries else None)
        queries, excluded = tuning_queries(real, embeddings)
    retriever_report = {"kind": retriever}
    if retriever == "partitioned":
        retriever_report.update(_save_partitioned(model.query_tower, embeddings, doc_ids, k, queries,
                                                  excluded, target_recall or 0.95, staging / RETRIEVER,
                                                  say))
    elif codes:
        from samtone_tf.index.quantized import QuantizedIndex

        quantized = QuantizedIndex(embeddings, doc_ids, codes.get("dims"), codes.get("precision", "float32"),
                                   codes.get("rescore"))
        save_quantized_retriever(model.query_tower, quantized, k, staging / RETRIEVER)
        retriever_report.update(kind="codes", **quantized.describe(), calibration=(
            "per-dimension minimum and maximum over the corpus, 255 steps" if quantized.precision == "int8" else None))
    else:
        save_retriever(model.query_tower, embeddings, doc_ids, k, staging / RETRIEVER)
    say(f"wrote {RETRIEVER} version {version} ({retriever_report['kind']})")
    tuned = prebuilt_index
    if target_recall is not None and prebuilt_index is None:
        from samtone_tf.index.tuning import tune_scann

        tuned = tune_scann(embeddings, doc_ids, queries, target_recall, k=k, excluded_rows=excluded, say=say)
    save_index(embeddings, doc_ids, k, staging / INDEX, index=tuned)
    say(f"wrote {INDEX} version {version}")
    top = min(k, len(doc_ids))
    manifest["models"][RETRIEVER] = {
        "path": f"{RETRIEVER}/{version}", "signature": "serving_default",
        "inputs": {"text": "string [None]"},
        "outputs": {"doc_ids": f"string [None, {top}]", "scores": f"float32 [None, {top}]"},
        "search": retriever_report}
    # The retriever's and the index's embeddings: this model's document tower's, of these documents.
    provenance = {"document_tower": manifest["provenance"]["document_encoder"],
                  "corpus": corpus_fingerprint((d, corpus.document_text(d)) for d in doc_ids)}
    _add_to_json(staging / INDEX / "manifest.json", provenance=provenance)
    manifest["corpus"] = {"name": corpus.name, "documents": len(doc_ids), "index": f"{INDEX}/{version}",
                          "provenance": provenance}
    if prebuilt_index is not None:
        manifest["corpus"]["prebuilt_index"] = {"settings": prebuilt_index.settings}
    elif tuned is not None:
        report = tuned.settings["tuning"]
        manifest["corpus"]["index_tuning"] = {
            key: report.get(key) for key in ("target_recall", "k", "reached", "tuning_recall",
                                             "held_out_recall", "queries_per_second")}


def _save_partitioned(query_tower, embeddings, doc_ids, k, queries, excluded, target_recall, directory, say):
    """The partitioned retriever: the fastest partitioning (`index.tuning.tune_partitions`) reaching
    `target_recall` on `queries`, probing the fewest partitions that do. -> what the manifest records of it."""
    from samtone_tf.index.tuning import exact_rows, tune_partitions

    depth = min(k, len(doc_ids) - int((excluded >= 0).any()))
    truth = exact_rows(embeddings, np.arange(len(doc_ids)), queries, depth, excluded)
    partitions, probes, _, report = tune_partitions(embeddings, queries, truth, target_recall, depth, excluded,
                                                    say=say)
    save_partitioned_retriever(query_tower, partitions, doc_ids, probes, k, directory)
    return report


def _manifest(model, version, earlier_versions, training_config, metrics):
    dimension = model.query_tower.output_dim
    return {
        "samtone_tf_version": __version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "version": version,
        "versions": sorted(set(earlier_versions) | {version}),
        "dimension": dimension,
        "architecture": model.architecture,
        "query_max_length": model.query_max_length,
        "document_max_length": model.document_max_length,
        "models": {name: {"path": f"{name}/{version}", "signature": "serving_default",
                          "inputs": {"text": "string [None]"},
                          "outputs": {"embedding": f"float32 [None, {dimension}]"}}
                   for name in ENCODERS},
        "training_config": training_config,
        "metrics": metrics,
        # What proves which towers these are (`samtone_tf.provenance`); export --check recomputes them.
        "provenance": {"query_encoder": tower_fingerprint(model.query_tower),
                       "document_encoder": tower_fingerprint(model.document_tower)},
    }


def _add_to_json(path, **fields):
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    record.update(fields)
    Path(path).write_text(json.dumps(record, indent=1), encoding="utf-8")


def _commit(out, staging, names, version, config_text, manifest_text):
    """Renames the staged models into place, then writes models.config and, last, the manifest.

    A journal (`.commit.json`, written first, removed last) records what the commit moves and the models.config and
    manifest before and after it: on any failure everything is put back at once, and after a kill (no chance to
    put anything back) the next export, under the lock, finishes or undoes the commit from the journal
    (`recover_interrupted_commit`), so models.config and the manifest never stay on different versions.
    """
    config_path = out / MODELS_CONFIG
    journal = {
        "version": version,
        "moves": [[f"{name}/{version}", f"{name}/.replaced-{version}-{uuid.uuid4().hex}"] for name in names],
        "config_before": config_path.read_text(encoding="utf-8") if config_path.is_file() else None,
        "manifest_before": (out / MANIFEST).read_text(encoding="utf-8") if (out / MANIFEST).is_file() else None,
        "config_after": config_text, "manifest_after": manifest_text,
    }
    atomic_write_text(out / COMMIT_JOURNAL, json.dumps(journal))
    moved = set()
    try:
        for name in names:
            target = out / name / str(version)
            target.parent.mkdir(exist_ok=True)
            os.chmod(target.parent, readable_mode(directory=True))
            if target.exists():
                os.rename(target, out / dict(journal["moves"])[f"{name}/{version}"])
            os.rename(staging / name, target)
            moved.add(f"{name}/{version}")
        atomic_write_text(config_path, config_text)
        atomic_write_text(out / MANIFEST, manifest_text)
    except BaseException:
        _undo_commit(out, journal, moved)
        raise
    _finish_commit(out, journal)


def _undo_commit(out, journal, moved=None):
    """Puts back what a commit (recorded by `journal`) moved and wrote; the journal goes last. `moved`: the version
    directories it renamed into place, when known (in the process that committed); after a kill, those of the
    journal's version that no earlier manifest committed."""
    for target, aside in journal["moves"]:
        ours = target in moved if moved is not None else _staged_by(out / target, journal)
        if ours:
            shutil.rmtree(out / target, ignore_errors=True)
        if (out / aside).exists():
            shutil.rmtree(out / target, ignore_errors=True)
            os.rename(out / aside, out / target)
    for name, before in ((MODELS_CONFIG, journal["config_before"]), (MANIFEST, journal["manifest_before"])):
        now = (out / name).read_text(encoding="utf-8") if (out / name).is_file() else None
        if now == before:
            continue  # not written yet: nothing to put back
        if before is None:
            (out / name).unlink(missing_ok=True)
        else:
            atomic_write_text(out / name, before)
    (out / COMMIT_JOURNAL).unlink(missing_ok=True)


def _finish_commit(out, journal):
    for _, aside in journal["moves"]:
        shutil.rmtree(out / aside, ignore_errors=True)
    (out / COMMIT_JOURNAL).unlink(missing_ok=True)


def _staged_by(target, journal):
    """Whether the version directory `target` is the one the journaled commit moved in (not an earlier one): it
    exists and no manifest before the commit named its version."""
    if not target.exists():
        return False
    before = json.loads(journal["manifest_before"]) if journal["manifest_before"] else None
    return journal["version"] not in committed_versions(before)


def recover_interrupted_commit(out, say=print):
    """After a killed commit: finishes it when its manifest was written (models.config made to agree), else undoes
    it (the previous version stays committed). Call with the export's lock held."""
    path = Path(out) / COMMIT_JOURNAL
    if not path.is_file():
        return
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
        journal["version"], journal["moves"]  # noqa: B018  (the fields a recovery needs)
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: an interrupted export's journal is unreadable; the export directory needs a "
                         "look by hand (export --check tells which models load)") from None
    manifest_path = Path(out) / MANIFEST
    written = manifest_path.is_file() and manifest_path.read_text(encoding="utf-8") == journal["manifest_after"]
    if written:
        say(f"finishing the commit of version {journal['version']}, interrupted after its manifest was written")
        atomic_write_text(Path(out) / MODELS_CONFIG, journal["config_after"])
        _finish_commit(Path(out), journal)
    else:
        say(f"undoing the commit of version {journal['version']}, interrupted before its manifest was written")
        _undo_commit(Path(out), journal)


def _version_dirs(out):
    """{name: [version numbers on disk]} for every model directory of the export."""
    return {name: sorted(int(p.name) for p in (Path(out) / name).glob("*") if p.name.isdigit())
            for name in ENCODERS + (RETRIEVER, INDEX)}


def next_version(out, manifest=None):
    on_disk = [v for versions in _version_dirs(out).values() for v in versions]
    return max(on_disk + committed_versions(manifest), default=0) + 1


def remove_leftovers(out, say=print):
    """Removes what a killed export left, recognised by the staging marker of its name only (a staging directory,
    a version set aside): never a version directory, committed or not, and nothing in a directory that does not
    carry the export marker. (A missing manifest is no sign of an interrupted export: a user may have lost it.)"""
    out = Path(out)
    require_owned(out, "export")
    leftovers = list(out.glob(f"{STAGING_PREFIX}*"))
    for name in ENCODERS + (RETRIEVER, INDEX):
        leftovers += list((out / name).glob(".replaced-*"))
        leftovers += list((out / name).glob(f"{STAGING_PREFIX}*"))
    for path in leftovers:
        say(f"removing {path}, left by an interrupted export")
        shutil.rmtree(path, ignore_errors=True)


def _is_export_of_an_earlier_version(directory):
    """An export written before markers existed: its manifest is a samtone_tf export manifest."""
    try:
        manifest = read_manifest(directory)
    except ValueError:
        return False
    return manifest is not None and "samtone_tf_version" in manifest and isinstance(manifest.get("models"), dict)


# --- reading an export ----------------------------------------------------------------------------


def export_version(out, version=None):
    """The committed version of the export at `out` to read: `version`, else the manifest's.

    Raises FileNotFoundError when `out` (a directory or a tf.io.gfile URL) has no manifest (no export was
    ever completed there) or when `version` was never committed.
    """
    manifest = read_manifest(out)
    if manifest is None:
        raise FileNotFoundError(f"{out}: no {MANIFEST}, so no complete export (an export writes it last)")
    if version is None:
        return manifest["version"], manifest
    if version not in committed_versions(manifest):
        raise FileNotFoundError(f"{out}: version {version} was not exported (committed: "
                                f"{committed_versions(manifest)})")
    return version, manifest


def exported_model_path(out, name, version):
    """The one resolution of an export's model: the SavedModel directory of `name` (query_encoder,
    document_encoder, retriever) of version `version` (from `export_version`) at `out`, a directory or a
    tf.io.gfile URL. Checked to hold a saved_model.pb and, for a local export, to lie inside it (not a symlink out).
    -> the path (str)."""
    path = tf.io.gfile.join(str(out), name, str(version))
    if "://" not in str(out) and not is_inside(path, out):
        raise ValueError(f"{path} leads outside the export (a symlink to {os.path.realpath(path)})")
    if not tf.io.gfile.exists(tf.io.gfile.join(path, "saved_model.pb")):
        raise FileNotFoundError(f"{path}: the manifest names it but it holds no saved_model.pb")
    return path


def load_saved_model(path, signature="serving_default"):
    """The SavedModel at `path`, checked to have `signature`; a damaged one (truncated, missing variables, another
    kind of SavedModel) is one ValueError naming the path."""
    try:
        loaded = tf.saved_model.load(str(path))
        loaded.signatures[signature]  # noqa: B018  (a SavedModel without it is not one of our models)
        return loaded
    except Exception as error:  # noqa: BLE001  (TensorFlow reports damage as OpError, ValueError, KeyError, ...)
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise ValueError(f"{path}: the SavedModel cannot be loaded ({type(error).__name__}: {first}); export again"
                         ) from None


def load_signature(path, signature="serving_default"):
    """The `signature` of the SavedModel at `path` (`load_saved_model`'s checks)."""
    return load_saved_model(path, signature).signatures[signature]


class ExportedEncoder:
    """encode_queries / encode_documents over the two encoders of one committed export version."""

    def __init__(self, export_dir, version=None):
        import tensorflow_text  # noqa: F401  (registers the tokenizer's ops)

        export_dir = Path(export_dir)
        self.version, self.manifest = export_version(export_dir, version)
        self.paths = {name: Path(exported_model_path(export_dir, name, self.version)) for name in ENCODERS}
        self._query = load_signature(self.paths["query_encoder"])
        self._document = load_signature(self.paths["document_encoder"])

    def encode_queries(self, texts, batch_size=64, verbose=True):
        from samtone_tf.encoding import encode_in_batches

        return encode_in_batches(lambda t: self._query(text=t)["embedding"], texts, batch_size, verbose, "queries")

    def encode_documents(self, texts, batch_size=64, verbose=True):
        from samtone_tf.encoding import encode_in_batches

        return encode_in_batches(lambda t: self._document(text=t)["embedding"], texts, batch_size, verbose,
                                 "documents")


def run_like_tf_serving(path, texts, signature="serving_default"):
    """Runs a SavedModel's signature the way TensorFlow Serving does: the MetaGraph tagged "serve"
    loaded into a TF1 session of a fresh graph, its variables restored by the saver's restore op,
    and the signature's tensors fed and fetched by name. -> {output name: np.ndarray}."""
    import tensorflow_text  # noqa: F401  (TF Serving links these ops)

    graph = tf.Graph()
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # the TF1 loader's deprecation notice: this is TF Serving's path on purpose
    try:
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
            if signature not in meta_graph.signature_def:
                raise ValueError(f"{path}: no signature {signature!r} (has {sorted(meta_graph.signature_def)})")
            spec = meta_graph.signature_def[signature]
            if list(spec.inputs) != ["text"]:
                raise ValueError(f"{path}: signature {signature!r} takes {sorted(spec.inputs)}, not 'text'")
            names = sorted(spec.outputs)
            values = session.run([spec.outputs[n].name for n in names], {spec.inputs["text"].name: list(texts)})
    finally:
        logger.setLevel(level)
    return dict(zip(names, values))


def run_tf2(path, texts, signature="serving_default", loaded=None):
    """Runs a SavedModel's signature after `tf.saved_model.load` (or on `loaded`, that load already made)."""
    import tensorflow_text  # noqa: F401

    loaded = loaded if loaded is not None else tf.saved_model.load(str(path))
    outputs = loaded.signatures[signature](text=tf.constant(list(texts)))
    return {name: value.numpy() for name, value in outputs.items()}


def check_export(out, texts=SAMPLE_TEXTS, version=None, atol=1e-5):
    """Loads every model of a committed export version as TF Serving does, runs its signature on
    `texts` and compares with the TF2 load; checks each model's tower against the fingerprint the manifest records
    (the retriever's query tower against the query encoder's, its corpus embeddings against the document
    encoder's) and models.config against the manifest. -> [(model name, path, None if OK else the problem)]."""
    out = Path(out)
    version, manifest = export_version(out, version)
    results = []
    recorded = manifest.get("provenance") or {}
    expected = {**recorded, RETRIEVER: recorded.get("query_encoder")}
    for name in manifest["models"]:
        path = out / name / str(version)
        try:
            path = Path(exported_model_path(out, name, version))
            served = run_like_tf_serving(path, texts)
            loaded = tf.saved_model.load(str(path))  # once, for the TF2 outputs and the fingerprint
            reference = run_tf2(path, texts, loaded=loaded)
            problem = _compare_outputs(served, reference, atol) or _fingerprint_problem(name, path, loaded, expected,
                                                                                         manifest, recorded)
        except Exception as error:  # noqa: BLE001  (any failure is the finding to report)
            problem = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
        results.append((name, path, problem))
    config_problem = _models_config_problem(out, manifest, version)
    if config_problem:
        results.append((MODELS_CONFIG, out / MODELS_CONFIG, config_problem))
    return results


def _fingerprint_problem(name, path, loaded, expected, manifest, recorded):
    if not expected.get(name):
        return None  # an export of an earlier version: nothing recorded to compare
    found = saved_model_fingerprint(path, loaded)
    if found != expected[name]:
        return (f"its tower's fingerprint {short(found)} is not the {'query encoder' if name == RETRIEVER else name}'s"
                f" {short(expected[name])} the manifest records: another model's SavedModel")
    corpus = (manifest.get("corpus") or {}).get("provenance") or {}
    if name == RETRIEVER and corpus.get("document_tower") not in (None, recorded.get("document_encoder")):
        return (f"its corpus embeddings were made by the tower {short(corpus.get('document_tower'))}, not this "
                f"export's document encoder {short(recorded.get('document_encoder'))}")
    if name == RETRIEVER and corpus:
        index_manifest = Path(path).parent.parent / INDEX / Path(path).name / "manifest.json"
        if index_manifest.is_file():
            index = json.loads(index_manifest.read_text(encoding="utf-8")).get("provenance")
            if index != corpus:
                return (f"the index of this version ({index_manifest.parent}) records the tower and corpus "
                        f"{index}, not the retriever's {corpus}: the two serve different embeddings")
    return None


def _models_config_problem(out, manifest, version):
    """Whether models.config pins every served model of the manifest to its version (None if so)."""
    path = Path(out) / MODELS_CONFIG
    if "serving_root" not in manifest:
        return None  # an export of an earlier version
    names = [name for name in manifest["models"] if name != INDEX]
    expected = serving_config(names, version, manifest["serving_root"])
    if not path.is_file():
        return "missing: TF Serving has no config for this export"
    if path.read_text(encoding="utf-8") != expected:
        return (f"does not pin {', '.join(names)} to version {version} under {manifest['serving_root']} as the "
                "manifest commits: TF Serving would serve other models than the project's readers")
    return None


def _compare_outputs(served, reference, atol):
    if sorted(served) != sorted(reference):
        return f"outputs {sorted(served)} under TF Serving's loader, {sorted(reference)} under tf.saved_model.load"
    for key in served:
        a, b = np.asarray(served[key]), np.asarray(reference[key])
        if a.shape != b.shape:
            return f"output {key!r}: shape {a.shape} under TF Serving's loader, {b.shape} under the TF2 load"
        if a.dtype.kind in "fc":
            difference = float(np.max(np.abs(a - b))) if a.size else 0.0
            if not np.isfinite(a).all() or difference > atol:
                return f"output {key!r} differs from the TF2 load by {difference:.3g} (tolerance {atol})"
        elif not np.array_equal(a, b):
            return f"output {key!r} differs from the TF2 load"
    return None
