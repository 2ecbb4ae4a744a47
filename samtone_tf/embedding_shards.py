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

import google_crc32c
import numpy as np
import tensorflow as tf

from samtone_tf.locations import file_inside

MANIFEST = "manifest.json"
SHARD_PREFIX = "embeddings"
SHARD_SUFFIX = ".tfrecord"
COMPLETION_SUFFIX = ".complete.json"
RUN_RECORD = "run.json"  # what an unfinished run was started with: a resumed run must be the same
DEAD_LETTER_PREFIX = "dead_letters"
DEAD_LETTER_SUFFIX = ".jsonl"
FORMAT = "samtone_tf.embedding_shards/1"
_READ_CHUNK = 1 << 22


def example_bytes(doc_id, embedding, digest=None):
    """One record: a document id, its float32 embedding [D] and (`digest`) the SHA-256 of the document it embeds
    (`provenance.document_digest`: its id and text), as a serialised tf.train.Example."""
    features = {
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(doc_id).encode("utf-8")])),
        "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(embedding, np.float32))),
    }
    if digest is not None:
        features["digest"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(digest)]))
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def shard_file(shard, num_shards):
    """The name of shard `shard` (from 0) of `num_shards`."""
    return f"{SHARD_PREFIX}-{shard:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def write_completion(path, records, sha256):
    """Records that the shard file at `path` is complete: its record count and checksum, beside it."""
    with tf.io.gfile.GFile(f"{path}{COMPLETION_SUFFIX}", "w") as f:
        f.write(json.dumps({"records": int(records), "sha256": sha256}))


def complete_shards(directory, num_shards):
    """{shard number: (records, sha256)} of the shards of `directory` (an interrupted run's) that are complete:
    a completion record that the file's bytes match (checksum and every record's CRC). Any other shard file, or
    a leftover temporary file, is removed (a run writes each shard whole, so a shard without a matching record
    is one it did not finish)."""
    complete = {}
    names = set(tf.io.gfile.listdir(str(directory)))
    for shard in range(num_shards):
        name = shard_file(shard, num_shards)
        if name not in names:
            continue
        path = tf.io.gfile.join(str(directory), name)
        try:
            with tf.io.gfile.GFile(f"{path}{COMPLETION_SUFFIX}", "r") as f:
                recorded = json.loads(f.read())
            found = scan_shard(path)
            if found == (recorded["records"], recorded["sha256"]):
                complete[shard] = found
                continue
        except (tf.errors.OpError, ValueError, KeyError, TypeError):
            pass
        for leftover in (path, f"{path}{COMPLETION_SUFFIX}"):
            if tf.io.gfile.exists(leftover):
                tf.io.gfile.remove(leftover)
    for name in names:
        if name.startswith(f".{SHARD_PREFIX}") and name.endswith(".tmp"):
            tf.io.gfile.remove(tf.io.gfile.join(str(directory), name))
    return complete


def shard_files(directory, prefix=SHARD_PREFIX, suffix=SHARD_SUFFIX):
    """The names (not paths) of `prefix`*`suffix` files in `directory`, sorted."""
    return sorted(name for name in tf.io.gfile.listdir(str(directory))
                  if name.startswith(prefix) and name.endswith(suffix))


def scan_shard(path):
    """(records, sha256 hex) of one TFRecord file, in one pass over its bytes. A file whose framing does not add
    up is an error."""
    digest = hashlib.sha256()
    records = sum(1 for _ in framed_records(path, digest))
    return records, digest.hexdigest()


def masked_crc32c(data):
    """TFRecord's checksum of `data`: CRC-32C, rotated and offset ("masked") as TensorFlow writes it."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def framed_records(path, digest):
    """Yields the records of the TFRecord file at `path` (framing: length, its CRC, the data, its CRC), feeding
    every byte read to `digest` (a hashlib object). Both CRCs of every record are checked: a damaged record raises
    ValueError naming the file and the record's number (from 1), as does an incomplete last record."""
    buffer = b""
    number = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
            buffer += chunk
            position = 0
            while len(buffer) - position >= 12:
                header = buffer[position:position + 8]
                (length,) = struct.unpack("<Q", header)
                (length_crc,) = struct.unpack("<I", buffer[position + 8:position + 12])
                if masked_crc32c(header) != length_crc:
                    raise ValueError(f"{path}: record {number + 1}: its length fails its CRC (a damaged shard)")
                end = position + 12 + length + 4
                if end > len(buffer):
                    break
                number += 1
                data = buffer[position + 12:end - 4]
                if masked_crc32c(data) != struct.unpack("<I", buffer[end - 4:end])[0]:
                    raise ValueError(f"{path}: record {number}: its bytes fail their CRC (a damaged shard)")
                yield data
                position = end
            buffer = buffer[position:]
    if buffer:
        raise ValueError(f"{path}: truncated TFRecord file (the last record is incomplete)")


def write_manifest(directory, model, dimension, extra=None):
    """Scans the shards of `directory` (counts and checksums) and writes the manifest last; returns it."""
    shards = []
    for name in shard_files(directory):
        records, sha256 = scan_shard(tf.io.gfile.join(directory, name))
        shards.append({"file": name, "records": records, "sha256": sha256})
    dead_letters = 0
    for name in shard_files(directory, DEAD_LETTER_PREFIX, DEAD_LETTER_SUFFIX):
        with tf.io.gfile.GFile(tf.io.gfile.join(directory, name), "r") as f:
            dead_letters += sum(1 for line in f if line.strip())
    manifest = dict(format=FORMAT, model=model, dimension=int(dimension),
                    count=sum(s["records"] for s in shards), dead_letters=dead_letters, shards=shards,
                    **(extra or {}))
    staging = tf.io.gfile.join(directory, f".{MANIFEST}.tmp")
    with tf.io.gfile.GFile(staging, "w") as f:
        f.write(json.dumps(manifest, indent=1))
    tf.io.gfile.rename(staging, tf.io.gfile.join(directory, MANIFEST), overwrite=True)
    return manifest


def read_manifest(directory):
    """The manifest of an embeddings directory, checked for the fields readers use."""
    path = tf.io.gfile.join(directory, MANIFEST)
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
        if name.startswith("."):
            raise ValueError(f"{path}: shard {name!r} is not a file of the directory")
        file_inside(directory, name, "shard")
    if dimension <= 0 or count != sum(records for _, records, _ in shards):
        raise ValueError(f"{path}: count {count} is not the sum of the shards' records (or dimension {dimension})")
    return manifest


def written_by_an_earlier_version(directory):
    """Whether `directory` holds embeddings written before ownership markers (its manifest has our format)."""
    path = tf.io.gfile.join(str(directory), MANIFEST)
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.loads(f.read()).get("format") == FORMAT
    except (tf.errors.OpError, ValueError, AttributeError):
        return False


def iter_embeddings(directory, batch_size=8192):
    """Yields (doc_ids: list of str, embeddings: float32 [n, D], digests: list of 32-byte document digests, b""
    where a record has none) batches of every shard the manifest lists, in one
    pass over each shard's bytes that also checks its record count and checksum: a shard that disagrees with the
    manifest raises ValueError before its last batch is yielded, so a consumer that commits only once the
    iteration is over (`load_embeddings`, `index build`) never commits a damaged shard. Memory: one batch."""
    manifest = read_manifest(directory)
    dimension = manifest["dimension"]
    spec = {"id": tf.io.FixedLenFeature([], tf.string),
            "embedding": tf.io.FixedLenFeature([dimension], tf.float32),
            "digest": tf.io.FixedLenFeature([], tf.string, default_value="")}

    def parsed(path, serialized):
        try:
            batch = tf.io.parse_example(tf.constant(serialized, tf.string), spec)
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(f"{path}: a record is not an (id, embedding[{dimension}]) example: "
                             f"{error.message.splitlines()[0]}") from None
        ids = [i.decode("utf-8") for i in batch["id"].numpy()]
        return ids, batch["embedding"].numpy(), list(batch["digest"].numpy())

    for shard in manifest["shards"]:
        path = tf.io.gfile.join(directory, shard["file"])
        digest, records, pending = hashlib.sha256(), 0, []
        for record in framed_records(path, digest):
            records += 1
            pending.append(record)
            if len(pending) == batch_size and records != shard["records"]:
                yield parsed(path, pending)
                pending = []
        sha256 = digest.hexdigest()
        if sha256 != shard["sha256"] or records != shard["records"]:
            raise ValueError(f"{path}: {records} records with sha256 {sha256[:12]}…, but the manifest says "
                             f"{shard['records']} with {shard['sha256'][:12]}… (changed or damaged since written)")
        if pending:
            yield parsed(path, pending)


def load_embeddings(directory, with_corpus_fingerprint=False):
    """(doc_ids: list of str, embeddings: float32 [count, D]) of a whole embeddings directory, filled in place into
    one preallocated array (never a second copy of the corpus). A document id twice is an error. With
    `with_corpus_fingerprint`, also the fingerprint (hex) of the documents embedded (`provenance`), or None when
    the shards do not record them (written before they did)."""
    from samtone_tf.provenance import combine_digests, fingerprint_hex

    manifest = read_manifest(directory)
    embeddings = np.empty((manifest["count"], manifest["dimension"]), np.float32)
    doc_ids, seen, row, total, complete = [], set(), 0, 0, True
    for ids, vectors, digests in iter_embeddings(directory):
        for doc_id in ids:
            if doc_id in seen:
                raise ValueError(f"{directory}: document id {doc_id!r} appears twice in the shards")
            seen.add(doc_id)
        embeddings[row:row + len(ids)] = vectors
        doc_ids.extend(ids)
        row += len(ids)
        complete = complete and all(len(d) == 32 for d in digests)
        total = combine_digests(digests, total) if complete else 0
    if with_corpus_fingerprint:
        return doc_ids, embeddings, fingerprint_hex(total) if complete else None
    return doc_ids, embeddings
