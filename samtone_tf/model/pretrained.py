"""Local Hugging Face BERT-family checkpoints into keras_hub backbones, offline.

A checkpoint directory holds `config.json`, `vocab.txt` and `model.safetensors`
or `pytorch_model.bin` (read here without PyTorch), and optionally the
sentence-transformers files (`sentence_bert_config.json`, `modules.json`,
`1_Pooling/config.json`) that say how it pools, normalises and truncates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras_hub
import numpy as np

from samtone_tf.locations import models_dir
from samtone_tf.model.text import WordPieceTokenizer
from samtone_tf.model.torch_checkpoint import read_pytorch_state_dict

DEFAULT_CHECKPOINT = "all-MiniLM-L6-v2"
SUPPORTED_MODEL_TYPES = ("bert",)


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint directory says about its model (no weights loaded)."""

    path: Path
    backbone_config: dict  # keras_hub.models.BertBackbone keyword arguments
    vocabulary_path: Path
    lowercase: bool
    max_length: int
    pooling: str  # "mean" or "cls"
    normalize: bool
    weights_path: Path | None


def resolve_checkpoint(name_or_path=None, models_directory=None):
    """The checkpoint directory: a path to one, or a name under the models directory.

    With no argument, the default checkpoint (all-MiniLM-L6-v2) in the models
    directory (flag, then $SAMTONE_MODELS, then ../shared/models).
    """
    name_or_path = name_or_path or DEFAULT_CHECKPOINT
    direct = Path(name_or_path)
    if (direct / "config.json").is_file():
        return direct
    candidate = models_dir(models_directory) / name_or_path
    if (candidate / "config.json").is_file():
        return candidate
    raise FileNotFoundError(
        f"no checkpoint {name_or_path!r}: neither {direct} nor {candidate} holds a config.json"
    )


def read_checkpoint(name_or_path=None, models_directory=None):
    """Reads the configuration files of a checkpoint directory into a `Checkpoint`."""
    path = resolve_checkpoint(name_or_path, models_directory)
    config = _read_json(path / "config.json")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{path / 'config.json'}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    for key in ("vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size",
                "intermediate_size", "max_position_embeddings"):
        if key not in config:
            raise ValueError(f"{path / 'config.json'}: missing {key!r}")
    backbone_config = {  # keras_hub.models.BertBackbone's arguments, as its Hugging Face converter maps them
        "vocabulary_size": config["vocab_size"], "num_layers": config["num_hidden_layers"],
        "num_heads": config["num_attention_heads"], "hidden_dim": config["hidden_size"],
        "intermediate_dim": config["intermediate_size"], "max_sequence_length": config["max_position_embeddings"],
        "num_segments": config.get("type_vocab_size", 2), "dropout": config.get("hidden_dropout_prob", 0.1),
    }

    vocabulary_path = path / "vocab.txt"
    if not vocabulary_path.is_file():
        raise FileNotFoundError(f"{path}: no vocab.txt (a WordPiece vocabulary is required)")
    tokenizer_config = _read_json(path / "tokenizer_config.json", default={})
    lowercase = bool(tokenizer_config.get("do_lower_case", True))

    max_length = config["max_position_embeddings"]
    sentence_config = _read_json(path / "sentence_bert_config.json", default={})
    if "max_seq_length" in sentence_config:
        max_length = min(max_length, int(sentence_config["max_seq_length"]))

    pooling_config = _read_json(path / "1_Pooling" / "config.json", default={})
    pooling = "cls" if pooling_config.get("pooling_mode_cls_token") else "mean"
    modules = _read_json(path / "modules.json", default=[])
    normalize = any("Normalize" in module.get("type", "") for module in modules)

    return Checkpoint(
        path=path,
        backbone_config=backbone_config,
        vocabulary_path=vocabulary_path,
        lowercase=lowercase,
        max_length=max_length,
        pooling=pooling,
        normalize=normalize,
        weights_path=_weights_file(path),  # None when the directory holds no weights
    )


def load_backbone(checkpoint, dropout=None, num_layers=None):
    """A keras_hub BertBackbone holding the checkpoint's weights, loaded by keras_hub's own Hugging Face
    converter (`BertBackbone.from_preset` on the directory).

    `num_layers` keeps only the first layers of the checkpoint (a smaller, faster encoder that still starts
    from pretrained weights); `dropout` overrides the checkpoint's rate. A `pytorch_model.bin` (which
    keras_hub reads only through PyTorch) is read without PyTorch and handed over as safetensors.
    """
    if checkpoint.weights_path is None:
        raise FileNotFoundError(f"{checkpoint.path}: neither model.safetensors nor pytorch_model.bin")
    overrides = {}
    if dropout is not None:
        overrides["dropout"] = dropout
    if num_layers is not None:
        total = checkpoint.backbone_config["num_layers"]
        if not 1 <= num_layers <= total:
            raise ValueError(f"num_layers must be between 1 and {total}; got {num_layers}")
        overrides["num_layers"] = num_layers
    try:
        if checkpoint.weights_path.suffix == ".safetensors":
            return keras_hub.models.BertBackbone.from_preset(str(checkpoint.path), **overrides)
        import shutil
        import tempfile

        from safetensors.numpy import save_file

        weights = {name: np.ascontiguousarray(value) for name, value in load_weights(checkpoint.weights_path).items()}
        with tempfile.TemporaryDirectory(prefix="samtone_checkpoint_") as directory:
            shutil.copy(checkpoint.path / "config.json", Path(directory) / "config.json")
            save_file(weights, str(Path(directory) / "model.safetensors"))
            return keras_hub.models.BertBackbone.from_preset(directory, **overrides)
    except (ValueError, KeyError) as error:
        problem = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ValueError(f"{checkpoint.weights_path}: the weights do not fit its config.json ({problem})") from None


def load_tokenizer(checkpoint, max_length=None, pad_to_max_length=False):
    """Our in-graph WordPieceTokenizer with the checkpoint's vocabulary and casing."""
    return WordPieceTokenizer(
        str(checkpoint.vocabulary_path),
        max_length=max_length or checkpoint.max_length,
        lowercase=checkpoint.lowercase,
        pad_to_max_length=pad_to_max_length,
    )


def load_weights(path):
    """{name: np.ndarray} from a .safetensors file or a PyTorch zip checkpoint (no PyTorch needed)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    return read_pytorch_state_dict(path)


# --- helpers -------------------------------------------------------------------


def _weights_file(path):
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    return None


def _read_json(path, default=None):
    if not path.is_file():
        if default is not None:
            return default
        raise FileNotFoundError(f"{path}: missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None


def dual_encoder_from_checkpoint(
    name_or_path=None,
    architecture="ade",
    models_directory=None,
    query_max_length=None,
    document_max_length=None,
    num_layers=None,
    dropout=None,
    load_weights=True,
    **dual_encoder_options,
):
    """A `DualEncoder` whose towers start from a local pretrained checkpoint.

    Pooling and casing follow the checkpoint (sentence-transformers files when
    present); max lengths default to the checkpoint's; `num_layers` keeps the first
    layers only; `load_weights=False` builds the same architecture without reading the weights (for
    weights restored from a training checkpoint). Other keyword arguments go to `DualEncoder`
    (projection_dim, learnable_temperature, ...).
    """
    from samtone_tf.model.towers import DualEncoder

    checkpoint = read_checkpoint(name_or_path, models_directory)
    dual_encoder_options.setdefault("pooling", checkpoint.pooling)
    if load_weights:
        backbone = load_backbone(checkpoint, dropout=dropout, num_layers=num_layers)
    else:  # the architecture only, for weights restored from elsewhere (a training run's checkpoint)
        config = dict(checkpoint.backbone_config)
        config.update({k: v for k, v in (("dropout", dropout), ("num_layers", num_layers)) if v is not None})
        backbone = keras_hub.models.BertBackbone(**config)
    return DualEncoder(
        backbone,
        str(checkpoint.vocabulary_path),
        architecture=architecture,
        query_max_length=query_max_length or checkpoint.max_length,
        document_max_length=document_max_length or checkpoint.max_length,
        lowercase=checkpoint.lowercase,
        **dual_encoder_options,
    )
