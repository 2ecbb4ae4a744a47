"""Corpus encoding as an Apache Beam pipeline: documents -> RunInference with an exported document encoder ->
sharded (id, embedding) TFRecords and a dead-letter output (`samtone_tf.embedding_shards` holds the layout).

The model handler loads the SavedModel with `tf.saved_model.load` and calls its `serving_default` signature on
batches of raw strings (Keras 3 cannot load a SavedModel directory, so Beam's stock TensorFlow handler cannot).
"""

from __future__ import annotations

import json

import apache_beam as beam
import tensorflow as tf
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from samtone_tf.beam_corpus import ReadCorpus
from samtone_tf.encoding import encode_in_batches
from samtone_tf.embedding_shards import (DEAD_LETTER_PREFIX, DEAD_LETTER_SUFFIX, SHARD_PREFIX, SHARD_SUFFIX,
                                         example_bytes)


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


def encode_corpus(pipeline, out_dir, saved_model_dir, line_files=None, line_format=None, documents=None,
                  batch_size=64, num_shards=0):
    """Adds the encoding of a corpus to `pipeline`: the corpus is either files of a line format (`line_files`,
    patterns; `line_format` "beir" or "id_text") or an in-memory list of (doc_id, text) pairs (`documents`, for the
    small corpora kept in one JSON file). Writes the embedding shards and the dead letters under `out_dir`
    (`num_shards` 0 lets the runner choose). The manifest is the caller's to write, once the run has succeeded."""
    if documents is not None:
        corpus = pipeline | "Documents" >> beam.Create(documents) | "Spread" >> beam.Reshuffle()
        dead_letters = pipeline | "No dead letters" >> beam.Create([])
    else:
        read = ReadCorpus(line_files, line_format)
        corpus = pipeline | "Read corpus" >> read
        dead_letters = read.dead_letters
    encoder = KeyedModelHandler(SavedModelTextEncoder(saved_model_dir, batch_size=batch_size))
    _ = (corpus
         | "Encode" >> RunInference(encoder)
         | "To examples" >> beam.MapTuple(lambda doc_id, result: example_bytes(doc_id, result.inference))
         | "Write shards" >> beam.io.WriteToTFRecord(tf.io.gfile.join(out_dir, SHARD_PREFIX),
                                                     file_name_suffix=SHARD_SUFFIX, num_shards=num_shards))
    _ = (dead_letters
         | "Dead letters to JSON" >> beam.Map(lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True))
         | "Write dead letters" >> beam.io.WriteToText(tf.io.gfile.join(out_dir, DEAD_LETTER_PREFIX),
                                                       file_name_suffix=DEAD_LETTER_SUFFIX))
