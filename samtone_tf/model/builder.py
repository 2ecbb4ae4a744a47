"""The model builder: the DualEncoder a training configuration names, from a pretrained checkpoint, `tiny`, a
BertBackbone config (`config:JSON or file`) or a keras_hub preset (`preset:NAME`)."""

from __future__ import annotations

import json
from pathlib import Path

from samtone_tf.model.pretrained import dual_encoder_from_checkpoint, read_checkpoint
from samtone_tf.model.towers import DualEncoder, tiny_dual_encoder


def build_model(config, load_pretrained_weights=True):
    """The DualEncoder a `TrainConfig` asks for, freshly initialised (from the pretrained checkpoint's weights
    unless `load_pretrained_weights` is False: the architecture only, for weights restored from a training
    checkpoint). `config` is read by attribute (model, models_dir, vocabulary, architecture, projection_dim,
    pooling, lengths, temperature, length_groups, dropout, num_layers, seed)."""
    options = dict(
        architecture=config.architecture, projection_dim=config.projection_dim,
        query_max_length=config.query_max_length, document_max_length=config.document_max_length,
        learnable_temperature=config.learnable_temperature, temperature=config.temperature,
        length_groups=config.length_groups,
    )
    if config.pooling:
        options["pooling"] = config.pooling
    name = config.model
    if name == "tiny" or name.startswith("config:"):
        vocabulary = config.vocabulary or str(read_checkpoint(None, config.models_dir).vocabulary_path)
        if name == "tiny":
            dropout = {} if config.dropout is None else {"dropout": config.dropout}
            return tiny_dual_encoder(vocabulary, seed=config.seed, **dropout, **options)
        import keras_hub

        spec = name[len("config:"):]
        arguments = json.loads(Path(spec).read_text() if Path(spec).is_file() else spec)
        if config.dropout is not None:
            arguments["dropout"] = config.dropout
        return DualEncoder(keras_hub.models.BertBackbone(**arguments), vocabulary, **options)
    if name.startswith("preset:"):
        import keras_hub

        preset = name[len("preset:"):]
        backbone = keras_hub.models.Backbone.from_preset(preset)
        vocabulary = keras_hub.models.BertTokenizer.from_preset(preset).vocabulary
        return DualEncoder(backbone, vocabulary, **options)
    return dual_encoder_from_checkpoint(name, models_directory=config.models_dir, num_layers=config.num_layers,
                                        dropout=config.dropout, load_weights=load_pretrained_weights, **options)
