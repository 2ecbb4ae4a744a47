"""Encoder towers on raw strings and the dual encoder in the paper's architectures.

A tower is tokenizer -> keras_hub backbone -> pooling -> optional projection ->
L2 normalisation. `DualEncoder` pairs a query tower and a document tower, sharing
what its architecture shares (Dong et al., EMNLP 2022):

    sde      one tower for both sides (everything shared)
    ade      two independent towers
    ade_spl  two backbones, one shared projection layer
    ade_ste  two towers sharing the token embedding table
    ade_fte  two towers whose token embeddings are frozen
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from samtone_tf.encoding import encode_texts, padded_to_bucket, tower_network
from samtone_tf.keras_loss import SamToNeLossMixin
from samtone_tf.model.text import WordPieceTokenizer
from samtone_tf.options import ARCHITECTURES, POOLINGS



def masked_mean(sequence, mask):
    """Mean of `sequence` [B, L, H] over positions where `mask` [B, L] is true -> [B, H]."""
    mask = tf.cast(mask, sequence.dtype)[:, :, None]
    total = tf.reduce_sum(sequence * mask, axis=1)
    count = tf.maximum(tf.reduce_sum(mask, axis=1), 1e-9)
    return total / count


@keras.saving.register_keras_serializable(package="samtone_tf")
class EncoderTower(keras.layers.Layer):
    """tf.string [B] -> float32 [B, D] embeddings.

    Args:
      tokenizer: a `WordPieceTokenizer` (or any layer mapping strings to
        {"token_ids", "padding_mask"}).
      backbone: a keras_hub backbone taking token_ids and padding_mask (and
        segment_ids, given as zeros, when it has that input) and returning
        {"sequence_output": [B, L, H], ...}.
      projection: optional Dense layer applied after pooling (may be shared).
      pooling: "mean" (masked mean over tokens, as in the paper) or "cls".
      normalize: L2-normalise the output.
    """

    def __init__(self, tokenizer, backbone, projection=None, pooling="mean", normalize=True, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.tokenizer = tokenizer
        self.backbone = backbone
        self.projection = projection
        self.pooling = pooling
        self.normalize = normalize
        self._needs_segment_ids = "segment_ids" in _input_names(backbone)
        _freeze_unused_pooler(backbone)
        self.built = True

    @property
    def output_dim(self):
        if self.projection is not None:
            return self.projection.units
        return self.backbone.hidden_dim

    def encode_tokens(self, token_ids, padding_mask, training=None):
        """int32 [B, L] token ids and their mask -> [B, D] embeddings (no tokenisation)."""
        inputs = {"token_ids": token_ids, "padding_mask": tf.cast(padding_mask, "int32")}
        if self._needs_segment_ids:
            inputs["segment_ids"] = tf.zeros_like(token_ids)
        outputs = self.backbone(inputs, training=training)
        sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
        if self.pooling == "mean":
            pooled = masked_mean(sequence, padding_mask)
        else:
            pooled = sequence[:, 0, :]
        if self.projection is not None:
            pooled = self.projection(pooled)
        pooled = tf.cast(pooled, tf.float32)
        if self.normalize:
            pooled = tf.math.l2_normalize(pooled, axis=-1)
        return pooled

    def call(self, texts, training=None):
        tokens = self.tokenizer(texts)
        return self.encode_tokens(tokens["token_ids"], tokens["padding_mask"], training=training)

    def compute_output_spec(self, texts, training=None):
        return keras.KerasTensor((texts.shape[0], self.output_dim), dtype="float32")


@keras.saving.register_keras_serializable(package="samtone_tf")
class DualEncoder(SamToNeLossMixin, keras.Model):
    """Query and document towers on raw strings, trained with `SamToNeLoss`.

    `call({"query": [B], "document": [B], optional "hard_negatives": [B, H]})`
    returns {"query": [B, D], "document": [B, D], ["hard_negatives": [B, H, D]],
    ["temperature": scalar]}: what `SamToNeLoss` reads.

    Build one with `model.pretrained.dual_encoder_from_checkpoint` (from a local
    checkpoint), `tiny_dual_encoder`, or `model.builder.build_model` (from a
    training configuration); the constructor takes the architecture's
    configuration so that a saved model can be rebuilt with the same sharing.

    Args:
      backbone: a keras_hub backbone, or its serialized config (a dict). The
        first tower uses it; two-tower architectures clone it for the document
        side (same initial weights).
      vocabulary: WordPiece vocabulary (file path or token list) for both sides.
      architecture: one of ARCHITECTURES.
      projection_dim: size of the projection after pooling; None for none
        (ade_spl needs one and defaults it to the backbone width, initialised to
        the identity so a pretrained embedding is unchanged at the start).
      pooling: "mean" or "cls".
      query_max_length, document_max_length: token limits of each side.
      lowercase: the tokenizer's casing.
      learnable_temperature: learn log(temperature), clipped to
        [min_temperature, max_temperature]; else `temperature` is fixed.
      length_groups: a tokenized batch (the training pipeline's) is encoded in
        this many groups of rows of similar length, each padded only to its own
        longest row (`encoding.encode_in_length_groups`: the same embeddings, less
        work on mixed lengths); 1 encodes the batch as padded.
    """

    def __init__(
        self,
        backbone,
        vocabulary=None,
        architecture="ade",
        projection_dim=None,
        pooling="mean",
        query_max_length=64,
        document_max_length=256,
        lowercase=True,
        pad_to_max_length=False,
        learnable_temperature=False,
        temperature=0.05,
        min_temperature=0.01,
        max_temperature=1.0,
        length_groups=8,
        **kwargs,
    ):
        """Builds the towers of `architecture` (the class docstring's arguments).

        Long because: the architectures differ only in what the two towers share; building both towers in one
        place shows every sharing side by side."""
        super().__init__(**kwargs)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}")
        if not 0 < min_temperature <= temperature <= max_temperature:
            raise ValueError(
                "temperatures must satisfy 0 < min_temperature <= temperature <= max_temperature; "
                f"got {min_temperature}, {temperature}, {max_temperature}"
            )
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        self.architecture = architecture
        self.pooling = pooling
        self.query_max_length = int(query_max_length)
        self.document_max_length = int(document_max_length)
        self.lowercase = lowercase
        self.pad_to_max_length = pad_to_max_length
        self.learnable_temperature = learnable_temperature
        self.temperature = float(temperature)
        self.min_temperature = float(min_temperature)
        self.max_temperature = float(max_temperature)
        self.length_groups = int(length_groups)
        hidden = backbone.hidden_dim
        if architecture == "ade_spl" and projection_dim is None:
            projection_dim = hidden
        self.projection_dim = projection_dim

        def tokenizer(max_length, name):
            return WordPieceTokenizer(
                vocabulary, max_length=max_length, lowercase=lowercase,
                pad_to_max_length=pad_to_max_length, name=name,
            )

        def projection(name):
            if projection_dim is None:
                return None
            initializer = "identity" if projection_dim == hidden else "glorot_uniform"
            layer = keras.layers.Dense(
                projection_dim, use_bias=False, kernel_initializer=initializer, name=name
            )
            layer.build((None, hidden))
            return layer

        query_backbone = backbone
        if architecture == "sde":
            document_backbone = query_backbone
        else:
            document_backbone = clone_backbone(query_backbone)
        if architecture == "ade_ste":
            share_token_embedding(document_backbone, query_backbone)
        if architecture == "ade_fte":
            query_backbone.token_embedding.trainable = False
            document_backbone.token_embedding.trainable = False

        query_projection = projection("query_projection")
        if architecture in ("sde", "ade_spl"):
            document_projection = query_projection
        else:
            document_projection = projection("document_projection")

        self.query_tower = EncoderTower(
            tokenizer(query_max_length, "query_tokenizer"), query_backbone, query_projection,
            pooling=pooling, name="query_tower",
        )
        self.document_tower = EncoderTower(
            tokenizer(document_max_length, "document_tokenizer"), document_backbone,
            document_projection, pooling=pooling, name="document_tower",
        )
        if learnable_temperature:
            self.log_temperature = self.add_weight(
                shape=(), name="log_temperature",
                initializer=keras.initializers.Constant(math.log(temperature)),
            )
        self.built = True

    # -- forward ----------------------------------------------------------------

    def current_temperature(self):
        """The temperature the loss uses: learnt (clipped) or fixed, float32 scalar."""
        if not self.learnable_temperature:
            return tf.constant(self.temperature, tf.float32)
        return tf.clip_by_value(
            tf.exp(tf.cast(self.log_temperature, tf.float32)), self.min_temperature, self.max_temperature
        )

    def call(self, inputs, training=None):
        """Raw strings ("query", "document", "hard_negatives") or the integer inputs of `tokenize_inputs`
        ("query_token_ids", "query_padding_mask", ...): the same embeddings either way."""
        outputs = {
            "query": self._encode_side(self.query_tower, inputs, "query", training),
            "document": self._encode_side(self.document_tower, inputs, "document", training),
        }
        if inputs.get("hard_negatives_token_ids") is not None:
            ids, mask = inputs["hard_negatives_token_ids"], inputs["hard_negatives_padding_mask"]
            batch, count, length = tf.shape(ids)[0], tf.shape(ids)[1], tf.shape(ids)[2]
            rows = None if None in ids.shape[:2] else ids.shape[0] * ids.shape[1]  # static when known: groups
            flat_ids, flat_mask = (tf.ensure_shape(tf.reshape(t, [-1, length]), [rows, None]) for t in (ids, mask))
            flat = tower_network(self.document_tower, self.length_groups)(flat_ids, flat_mask, training=training)
            outputs["hard_negatives"] = tf.reshape(flat, [batch, count, flat.shape[-1]])
        elif inputs.get("hard_negatives") is not None:
            negatives = tf.convert_to_tensor(inputs["hard_negatives"], tf.string)
            batch, count = tf.shape(negatives)[0], tf.shape(negatives)[1]
            flat = self.document_tower(tf.reshape(negatives, [-1]), training=training)
            outputs["hard_negatives"] = tf.reshape(flat, [batch, count, flat.shape[-1]])
        # The model is the one holder of the temperature (fixed or learnt): the loss it is compiled with reads it here.
        outputs["temperature"] = self.current_temperature()
        return outputs

    def _encode_side(self, tower, inputs, key, training):
        if f"{key}_token_ids" in inputs:
            network = tower_network(tower, self.length_groups)
            return network(inputs[f"{key}_token_ids"], inputs[f"{key}_padding_mask"], training=training)
        return tower(inputs[key], training=training)

    def tokenize_inputs(self, inputs, length_bucket=1):
        """String inputs {"query": [B], "document": [B], "hard_negatives": [B, H] (optional)} -> integer inputs
        {"query_token_ids": int32 [B, Lq], "query_padding_mask": bool [B, Lq], "document_...": [B, Ld],
        "hard_negatives_...": [B, H, Ld]}, each padded to its longest text (as the in-graph tokenizer pads, so
        training is the same either way), or rounded up to a multiple of `length_bucket` (at most the side's
        max length) so that an XLA-compiled step sees few shapes. For a `tf.data` map on the host: the replica
        step then runs on integer tensors only (TPUs take no strings; GPUs get no string copies)."""
        result = {}
        for key, tower in (("query", self.query_tower), ("document", self.document_tower)):
            tokens = padded_to_bucket(tower.tokenizer(inputs[key]), tower.tokenizer, length_bucket)
            result[f"{key}_token_ids"], result[f"{key}_padding_mask"] = tokens
        if inputs.get("hard_negatives") is not None:
            negatives = tf.convert_to_tensor(inputs["hard_negatives"], tf.string)
            batch, count = tf.shape(negatives)[0], tf.shape(negatives)[1]
            ids, mask = padded_to_bucket(self.document_tower.tokenizer(tf.reshape(negatives, [-1])),
                                         self.document_tower.tokenizer, length_bucket)
            length = tf.shape(ids)[1]
            result["hard_negatives_token_ids"] = tf.reshape(ids, [batch, count, length])
            result["hard_negatives_padding_mask"] = tf.reshape(mask, [batch, count, length])
        return result

    # -- inference --------------------------------------------------------------

    def encode_queries(self, texts, batch_size=64, verbose=True, jit_compile=False):
        """Query embeddings of `texts` (a list of str) -> np.ndarray [N, D]."""
        return encode_texts(self.query_tower, texts, batch_size, verbose, "queries", jit_compile)

    def encode_documents(self, texts, batch_size=64, verbose=True, jit_compile=False):
        """Document embeddings of `texts` (a list of str) -> np.ndarray [N, D]."""
        return encode_texts(self.document_tower, texts, batch_size, verbose, "documents", jit_compile)

    # -- saving ------------------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            # The query side's backbone describes both: the constructor rebuilds the sharing.
            "backbone": keras.saving.serialize_keras_object(self.query_tower.backbone),
            "architecture": self.architecture,
            "projection_dim": self.projection_dim,
            "pooling": self.pooling,
            "query_max_length": self.query_max_length,
            "document_max_length": self.document_max_length,
            "lowercase": self.lowercase,
            "pad_to_max_length": self.pad_to_max_length,
            "learnable_temperature": self.learnable_temperature,
            "temperature": self.temperature,
            "min_temperature": self.min_temperature,
            "max_temperature": self.max_temperature,
            "length_groups": self.length_groups,
        }  # the vocabulary is a tokenizer asset

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def clone_backbone(backbone):
    """A new backbone with the same configuration and (copied) weights."""
    clone = backbone.__class__.from_config(backbone.get_config())
    clone.set_weights(backbone.get_weights())
    return clone


def share_token_embedding(backbone, source):
    """Makes `backbone` use `source`'s token embedding table (one variable for both)."""
    target_layer, source_layer = backbone.token_embedding, source.token_embedding
    if target_layer is None or source_layer is None:
        raise ValueError("ade_ste needs backbones exposing `token_embedding`")
    if tuple(target_layer.embeddings.shape) != tuple(source_layer.embeddings.shape):
        raise ValueError("ade_ste: the two token embedding tables differ in shape")
    # Keras has no public way to share one variable between two layers: swap the
    # variable behind the layer's `embeddings` and keep its variable list in step.
    old = target_layer._embeddings
    target_layer._tracker.unlock()
    target_layer._trainable_variables[:] = [
        v for v in target_layer._trainable_variables if v is not old
    ]
    target_layer._embeddings = source_layer._embeddings  # the tracker records it
    target_layer._tracker.lock()


def _freeze_unused_pooler(backbone):
    """BERT's [CLS] pooler feeds no embedding here: freeze it so it gets no optimizer state."""
    try:
        pooler = backbone.get_layer("pooled_dense")
    except ValueError:
        return
    pooler.trainable = False


def _input_names(backbone):
    inputs = getattr(backbone, "input", None)
    if isinstance(inputs, dict):
        return set(inputs)
    return {getattr(x, "name", "").split(":")[0] for x in tf.nest.flatten(inputs)}


TINY_BACKBONE = dict(num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, max_sequence_length=128)


def tiny_dual_encoder(vocabulary, architecture="ade", seed=0, dropout=0.1, **options):
    """A randomly initialised 2-layer, 32-wide BERT dual encoder, for tests and smoke runs.

    `vocabulary` is a vocabulary file path or token list; other options go to DualEncoder.
    """
    import keras_hub

    from samtone_tf.model.text import read_vocabulary

    tokens = read_vocabulary(vocabulary) if isinstance(vocabulary, (str, bytes)) or hasattr(
        vocabulary, "__fspath__"
    ) else list(vocabulary)
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(tokens), dropout=dropout, **TINY_BACKBONE)
    options.setdefault("query_max_length", 32)
    options.setdefault("document_max_length", 64)
    return DualEncoder(backbone, vocabulary, architecture=architecture, **options)
