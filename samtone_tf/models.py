"""Every way to get a dual encoder: from a configuration (pretrained checkpoint, `tiny`, a
BertBackbone config, a keras_hub preset), from a training model_dir, a `.keras` file or an export.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import tensorflow as tf

from samtone_tf.pretrained import dual_encoder_from_checkpoint, read_checkpoint
from samtone_tf.run_dir import checkpoint_candidates
from samtone_tf.towers import DualEncoder, tiny_dual_encoder
from samtone_tf.training import TrainConfig


def build_model(config, load_pretrained_weights=True):
    """The DualEncoder a `TrainConfig` (or its dict, e.g. a run's config.json) asks for, freshly initialised
    (from the pretrained checkpoint's weights unless `load_pretrained_weights` is False: the architecture only,
    for weights restored from a training checkpoint)."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
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


def load_keras_file(path):
    """A DualEncoder saved with `model.save(path)` (a .keras archive)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a .keras archive (damaged or truncated: it is not a readable zip file)")
    try:
        return keras.saving.load_model(path)
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as error:
        raise ValueError(f"{path}: damaged .keras archive ({type(error).__name__}: {error})") from None


def load_trained_model(model_dir):
    """The trained DualEncoder of a training model_dir: model.keras, else the latest checkpoint."""
    model_dir = Path(model_dir)
    if (model_dir / "model.keras").is_file():
        return load_keras_file(model_dir / "model.keras")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: neither model.keras nor config.json (not a training model_dir)")
    candidates = checkpoint_candidates(model_dir / "checkpoints")
    if not candidates:
        raise FileNotFoundError(f"{model_dir}: no checkpoint to export")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise ValueError(f"{config_path}: not a readable run configuration ({error})") from None
    # The architecture only: every weight comes from the run's checkpoint, not the pretrained one.
    model = build_model(config, load_pretrained_weights=False)
    damaged = []
    for path in candidates:  # newest first; a damaged one (a crash while writing it) is passed over, as train does
        try:
            status = tf.train.Checkpoint(model=model).restore(path).expect_partial()
            status.assert_existing_objects_matched()
        except AssertionError as error:
            raise ValueError(f"{path} does not match the run's config.json ({str(error).splitlines()[0][:200]})"
                             ) from None
        except Exception as error:  # noqa: BLE001  (TF reports damage as OpError, ValueError, IndexError...)
            problem = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            warnings.warn(f"checkpoint {path} is damaged ({problem}); using the previous one", stacklevel=2)
            damaged.append(path)
            continue
        return model
    raise ValueError(f"every checkpoint in {model_dir / 'checkpoints'} is damaged ({', '.join(damaged)})")


def load_encoder(path, version=None):
    """Anything with encode_queries/encode_documents: a training model_dir, a .keras file, an export
    directory (the version its manifest commits, or `version`), or a pretrained Hugging Face checkpoint (a
    directory, or a name under the models directory) as an untrained SDE: the zero-shot model."""
    from samtone_tf.pretrained import resolve_checkpoint

    path = Path(path)
    if (path / "query_encoder").is_dir() or (path / "manifest.json").is_file():
        from samtone_tf.serving import ExportedEncoder

        return ExportedEncoder(path, version)
    if path.suffix == ".keras":
        return load_keras_file(path)
    if (path / "vocab.txt").is_file() and not (path / "checkpoints").is_dir():
        return dual_encoder_from_checkpoint(str(path), architecture="sde")
    if path.is_dir():
        return load_trained_model(path)
    try:
        return dual_encoder_from_checkpoint(str(resolve_checkpoint(str(path))), architecture="sde")
    except FileNotFoundError:
        pass
    raise FileNotFoundError(f"{path}: not a model_dir, a .keras file, an export directory or a pretrained checkpoint")
