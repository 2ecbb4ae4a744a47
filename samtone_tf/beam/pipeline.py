"""Corpus encoding as an Apache Beam pipeline: documents -> RunInference with an exported document encoder ->
sharded (id, embedding) TFRecords and a dead-letter output (`samtone_tf.embedding_shards` holds the layout).

The model handler loads the SavedModel with `tf.saved_model.load` and calls its `serving_default` signature on
batches of raw strings (Keras 3 cannot load a SavedModel directory, so Beam's stock TensorFlow handler cannot).
"""

from __future__ import annotations

import hashlib
import json
import uuid

import apache_beam as beam
from apache_beam.metrics import Metrics
import tensorflow as tf
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from samtone_tf.beam.corpus import ReadCorpus
from samtone_tf.embedding_shards import (DEAD_LETTER_PREFIX, DEAD_LETTER_SUFFIX, example_bytes, shard_file,
                                         write_completion)
from samtone_tf.encoding import encode_in_batches
from samtone_tf.provenance import document_digest


class SavedModelTextEncoder(ModelHandler):
    """RunInference handler: a SavedModel whose `serving_default(text: string [None])` returns
    {"embedding": float32 [None, D]} (our exported encoders), run on batches of raw strings.

    RunInference hands over up to `batch_size * sort_window` documents at once; they are encoded longest first in
    batches of `batch_size` (`samtone_tf.encoding.encode_in_batches`), so a batch pads little, as in-process
    encoding of a whole sorted corpus does.
    """

    def __init__(self, saved_model_dir, batch_size=64, sort_window=16):
        super().__init__()
        self.saved_model_dir = str(saved_model_dir)
        self.batch_size, self.sort_window = int(batch_size), int(sort_window)

    def load_model(self):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer's ops before the graph loads)

        return tf.saved_model.load(self.saved_model_dir).signatures["serving_default"]

    def run_inference(self, batch, model, inference_args=None):
        embeddings = encode_in_batches(lambda texts: model(text=texts)["embedding"], batch, self.batch_size,
                                       verbose=False)
        return [PredictionResult(text, embedding) for text, embedding in zip(batch, embeddings)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.batch_size * self.sort_window}

    def get_metrics_namespace(self):
        return "samtone_tf_encode"


def shard_of(doc_id, num_shards):
    """The shard a document goes to: fixed by its id (the same in every run), so a resumed run knows which
    documents the shards it keeps hold."""
    return int.from_bytes(hashlib.sha256(str(doc_id).encode("utf-8")).digest()[:8], "big") % num_shards


class WriteShard(beam.DoFn):
    """(shard, [example bytes]) -> the shard's TFRecord file, written whole under a temporary name and renamed, then
    its completion record (records and sha256): a shard with a completion record that matches it is complete, and
    a resumed run keeps it."""

    def __init__(self, out_dir, num_shards):
        self.out_dir, self.num_shards = str(out_dir), int(num_shards)

    def process(self, element):
        shard, records = element
        path = tf.io.gfile.join(self.out_dir, shard_file(shard, self.num_shards))
        staging = tf.io.gfile.join(self.out_dir, f".{shard_file(shard, self.num_shards)}.{uuid.uuid4().hex}.tmp")
        digest, count = hashlib.sha256(), 0
        with tf.io.TFRecordWriter(staging) as writer:
            for record in sorted(records):  # the same bytes for the same documents, whatever order they came in
                writer.write(record)
                count += 1
        with tf.io.gfile.GFile(staging, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        tf.io.gfile.rename(staging, path, overwrite=True)
        write_completion(path, count, digest.hexdigest())
        yield shard


def encode_corpus(pipeline, out_dir, saved_model_dir, line_files=None, line_format=None, documents=None,
                  batch_size=64, num_shards=16, skip_shards=()):
    """Adds the encoding of a corpus to `pipeline`: the corpus is either files of a line format (`line_files`,
    patterns; `line_format` "beir" or "id_text") or an in-memory list of (doc_id, text) pairs (`documents`, for the
    small corpora kept in one JSON file). Each document goes to shard `shard_of(id, num_shards)`; the documents of
    `skip_shards` (complete shards of an earlier, interrupted run) are not encoded again. Writes the embedding
    shards, each with its completion record, and the dead letters under `out_dir`. The manifest is the caller's to
    write, once the run has succeeded."""
    skip = frozenset(int(s) for s in skip_shards)
    if documents is not None:
        corpus = pipeline | "Documents" >> beam.Create(documents) | "Spread" >> beam.Reshuffle()
        dead_letters = pipeline | "No dead letters" >> beam.Create([])
    else:
        read = ReadCorpus(line_files, line_format)
        corpus = pipeline | "Read corpus" >> read
        dead_letters = read.dead_letters
    encoder = KeyedModelHandler(SavedModelTextEncoder(saved_model_dir, batch_size=batch_size))
    encoded = Metrics.counter("samtone_tf_encode", "documents_encoded")

    def to_encode(element):
        if shard_of(element[0], num_shards) in skip:
            return False
        encoded.inc()
        return True

    _ = (corpus
         | "Not in complete shards" >> beam.Filter(to_encode)
         | "Encode" >> RunInference(encoder)
         | "To examples" >> beam.MapTuple(lambda doc_id, result: (shard_of(doc_id, num_shards), example_bytes(
             doc_id, result.inference, document_digest(doc_id, result.example))))
         | "Group by shard" >> beam.GroupByKey()
         | "Write shards" >> beam.ParDo(WriteShard(out_dir, num_shards)))
    _ = (dead_letters
         | "Dead letters to JSON" >> beam.Map(lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True))
         | "Write dead letters" >> beam.io.WriteToText(tf.io.gfile.join(out_dir, DEAD_LETTER_PREFIX),
                                                       file_name_suffix=DEAD_LETTER_SUFFIX))
