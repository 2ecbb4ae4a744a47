"""Every way to load a dual encoder: from a training model_dir, a `.keras` file, an export or a pretrained
checkpoint (building one from a configuration is `model.builder`'s)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import tensorflow as tf

from samtone_tf.model.builder import build_model
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.run_dir import checkpoint_candidates


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
    model = build_model(TrainConfig.from_dict(config), load_pretrained_weights=False)
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
    if _is_export(Path(path)):
        from samtone_tf.serving import ExportedEncoder

        return ExportedEncoder(Path(path), version)
    return load_dual_encoder(path)[0]


def _is_export(path):
    return (path / "query_encoder").is_dir() or (path / "manifest.json").is_file()


def load_dual_encoder(source, query_max_length=None, document_max_length=None):
    """The DualEncoder (a Keras model, with towers to export) of `source`: a training model_dir, a `.keras` file, or
    a pretrained Hugging Face checkpoint (a directory with vocab.txt, or a name under the models directory) as an
    untrained SDE, whose query and document lengths default to the checkpoint's. Lengths are refused for a trained
    model (its towers were trained at theirs), and an export is refused (it is a SavedModel already).
    -> (model, the training model_dir or None)."""
    from samtone_tf.model.pretrained import resolve_checkpoint

    path = Path(source)
    lengths = {k: v for k, v in (("query_max_length", query_max_length),
                                 ("document_max_length", document_max_length)) if v is not None}
    if _is_export(path):
        raise ValueError(f"{path}: an export already (SavedModels); export a training model_dir, a .keras file or a "
                         "pretrained checkpoint")
    is_checkpoint = (path / "vocab.txt").is_file() and not (path / "checkpoints").is_dir()
    if not is_checkpoint and (path.suffix == ".keras" or path.is_dir()):
        if lengths:
            raise ValueError(f"{', '.join('--' + k for k in lengths)}: only for a pretrained checkpoint; {path} is a "
                             "trained model, whose towers keep the lengths they were trained at")
        if path.suffix == ".keras":
            return load_keras_file(path), None
        return load_trained_model(path), path
    try:
        checkpoint = path if is_checkpoint else resolve_checkpoint(str(source))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: not a model_dir, a .keras file, an export directory or a pretrained "
                                f"checkpoint ({error})") from None
    return dual_encoder_from_checkpoint(str(checkpoint), architecture="sde", **lengths), None


def with_compute_dtype(model, compute_dtype, warn=print):
    """`model` (a DualEncoder) computing in `compute_dtype`: "float32" returns it as it is; "bfloat16" returns a
    copy built under Keras's mixed_bfloat16 policy (float32 weights, the same values; bf16 matrix products), whose
    embeddings stay float32 and L2-normalised (the towers cast before normalising). On a CPU without native bf16
    (avx512_bf16 or AMX), where bf16 is emulated and slower, `warn` says so."""
    if compute_dtype in (None, "float32"):
        return model
    if compute_dtype != "bfloat16":
        raise ValueError(f"compute_dtype must be float32 or bfloat16; got {compute_dtype!r}")
    if not hasattr(model, "query_tower"):
        raise ValueError("--compute_dtype applies to a Keras model (a model_dir, a .keras file, a checkpoint); an "
                         "export computes in the dtype it was exported in")
    from samtone_tf.training.step import cpu_has_native_bf16

    if not tf.config.list_logical_devices("GPU") and not cpu_has_native_bf16():
        warn("warning: bfloat16 on a CPU without native bf16 (avx512_bf16 or amx_bf16) is emulated, and slower than "
             "float32 here")
    policy = "mixed_bfloat16"
    config = model.get_config()
    config["backbone"] = {**config["backbone"], "config": {**config["backbone"]["config"], "dtype": policy}}
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)  # the projections and the rest the model builds itself
    try:
        converted = type(model).from_config(config)
    finally:
        keras.config.set_dtype_policy(previous)
    converted.set_weights(model.get_weights())
    for tower in ("query_tower", "document_tower"):  # a vocabulary is an asset, not configuration
        getattr(converted, tower).tokenizer.set_vocabulary(getattr(model, tower).tokenizer.vocabulary)
    return converted
