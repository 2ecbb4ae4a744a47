"""Sharded corpus embeddings on disk: what `python -m samtone_tf.encode` writes and `python -m samtone_tf.index
build` reads.

    DIR/embeddings-SSSSS-of-NNNNN.tfrecord   tf.train.Example records: "id" (bytes, one), "embedding" (float, D)
    DIR/dead_letters-SSSSS-of-NNNNN.jsonl    documents that could not be read: {"file", "line", "reason"}
    DIR/manifest.json                        written last: model, dimension, count, shards with records and sha256

TFRecord of `tf.train.Example` because every TensorFlow tool reads it (tf.data, TFX, Beam's `ReadFromTFRecord`),
it streams, and each record carries its id beside its vector. Paths go through `tf.io.gfile`, so DIR may be local
or a bucket (gs://...) as on Dataflow.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import tensorflow as tf

MANIFEST = "manifest.json"
SHARD_PREFIX = "embeddings"
SHARD_SUFFIX = ".tfrecord"
DEAD_LETTER_PREFIX = "dead_letters"
DEAD_LETTER_SUFFIX = ".jsonl"
FORMAT = "samtone_tf.embedding_shards/1"
_READ_CHUNK = 1 << 22


def example_bytes(doc_id, embedding):
    """One record: a document id and its float32 embedding [D], as a serialised tf.train.Example."""
    features = {
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(doc_id).encode("utf-8")])),
        "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(embedding, np.float32))),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def join(directory, name):
    return f"{str(directory).rstrip('/')}/{name}"


def shard_files(directory, prefix=SHARD_PREFIX, suffix=SHARD_SUFFIX):
    """The names (not paths) of `prefix`*`suffix` files in `directory`, sorted."""
    return sorted(name for name in tf.io.gfile.listdir(str(directory))
                  if name.startswith(prefix) and name.endswith(suffix))


def scan_shard(path):
    """(records, sha256 hex) of one TFRecord file, in one pass over its bytes (the records are counted from the
    TFRecord framing: length, its CRC, the data, its CRC). A file whose framing does not add up is an error."""
    digest, records, pending, buffer = hashlib.sha256(), 0, 0, b""
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
            buffer += chunk
            position = 0
            while True:
                if pending:
                    step = min(pending, len(buffer) - position)
                    position += step
                    pending -= step
                    if pending:
                        break
                if len(buffer) - position < 12:
                    break
                (length,) = struct.unpack("<Q", buffer[position:position + 8])
                position += 12
                pending = length + 4
                records += 1
            buffer = buffer[position:]
    if pending or buffer:
        raise ValueError(f"{path}: truncated TFRecord file (the last record is incomplete)")
    return records, digest.hexdigest()


def write_manifest(directory, model, dimension, extra=None):
    """Scans the shards of `directory` (counts and checksums) and writes the manifest last; returns it."""
    shards = []
    for name in shard_files(directory):
        records, sha256 = scan_shard(join(directory, name))
        shards.append({"file": name, "records": records, "sha256": sha256})
    dead_letters = 0
    for name in shard_files(directory, DEAD_LETTER_PREFIX, DEAD_LETTER_SUFFIX):
        with tf.io.gfile.GFile(join(directory, name), "r") as f:
            dead_letters += sum(1 for line in f if line.strip())
    manifest = dict(format=FORMAT, model=model, dimension=int(dimension),
                    count=sum(s["records"] for s in shards), dead_letters=dead_letters, shards=shards,
                    **(extra or {}))
    staging = join(directory, f".{MANIFEST}.tmp")
    with tf.io.gfile.GFile(staging, "w") as f:
        f.write(json.dumps(manifest, indent=1))
    tf.io.gfile.rename(staging, join(directory, MANIFEST), overwrite=True)
    return manifest


def read_manifest(directory):
    """The manifest of an embeddings directory, checked for the fields readers use."""
    path = join(directory, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: no manifest, so no complete encoding run (the run writes it last)")
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            manifest = json.loads(f.read())
        dimension, count = int(manifest["dimension"]), int(manifest["count"])
        shards = [(str(s["file"]), int(s["records"]), str(s["sha256"])) for s in manifest["shards"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not an embeddings manifest ({type(error).__name__}: {error})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for name, _, _ in shards:
        if "/" in name or name.startswith("."):
            raise ValueError(f"{path}: shard {name!r} is not a file of the directory")
    if dimension <= 0 or count != sum(records for _, records, _ in shards):
        raise ValueError(f"{path}: count {count} is not the sum of the shards' records (or dimension {dimension})")
    return manifest


def iter_embeddings(directory, batch_size=8192):
    """Yields (doc_ids: list of str, embeddings: float32 [n, D]) batches of every shard the manifest lists, each
    shard's checksum and record count verified first. Memory: one batch."""
    manifest = read_manifest(directory)
    dimension = manifest["dimension"]
    spec = {"id": tf.io.FixedLenFeature([], tf.string),
            "embedding": tf.io.FixedLenFeature([dimension], tf.float32)}
    for shard in manifest["shards"]:
        path = join(directory, shard["file"])
        records, sha256 = scan_shard(path)
        if sha256 != shard["sha256"] or records != shard["records"]:
            raise ValueError(f"{path}: {records} records with sha256 {sha256[:12]}…, but the manifest says "
                             f"{shard['records']} with {shard['sha256'][:12]}… (changed or damaged since written)")
        dataset = tf.data.TFRecordDataset(path).batch(batch_size).map(lambda b: tf.io.parse_example(b, spec))
        try:
            for batch in dataset:
                yield [i.decode("utf-8") for i in batch["id"].numpy()], batch["embedding"].numpy()
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(f"{path}: a record is not an (id, embedding[{dimension}]) example: "
                             f"{error.message.splitlines()[0]}") from None


def load_embeddings(directory):
    """(doc_ids: list of str, embeddings: float32 [count, D]) of a whole embeddings directory, filled in place into
    one preallocated array (never a second copy of the corpus). A document id twice is an error."""
    manifest = read_manifest(directory)
    embeddings = np.empty((manifest["count"], manifest["dimension"]), np.float32)
    doc_ids, seen, row = [], set(), 0
    for ids, vectors in iter_embeddings(directory):
        for doc_id in ids:
            if doc_id in seen:
                raise ValueError(f"{directory}: document id {doc_id!r} appears twice in the shards")
            seen.add(doc_id)
        embeddings[row:row + len(ids)] = vectors
        doc_ids.extend(ids)
        row += len(ids)
    return doc_ids, embeddings
