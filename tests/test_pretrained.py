"""Local Hugging Face checkpoints into keras_hub backbones, offline and without PyTorch."""

import json
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from samtone_tf.model.pretrained import (dual_encoder_from_checkpoint, load_backbone, read_checkpoint,
                                         read_pytorch_state_dict, resolve_checkpoint)
from tests.helpers import FIXTURES, REPOSITORY_ROOT

TINY_BERT = FIXTURES / "tiny-bert"


@pytest.mark.slow
def test_default_checkpoint_matches_the_reference_embeddings(default_checkpoint):
    rows = [json.loads(line) for line in open(default_checkpoint / "reference_embeddings.jsonl")]
    model = dual_encoder_from_checkpoint(default_checkpoint, architecture="ade")
    texts = [row["text"] for row in rows]
    reference = np.array([row["embedding"] for row in rows])
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    for embeddings in (model.encode_queries(texts, verbose=False), model.encode_documents(texts, verbose=False)):
        cosine = np.sum(embeddings * reference, axis=1)
        assert cosine.min() >= 0.9999, (cosine.min(), texts[int(np.argmin(cosine))])


def test_sentence_transformers_settings_are_read(default_checkpoint):
    checkpoint = read_checkpoint(default_checkpoint)
    assert checkpoint.pooling == "mean" and checkpoint.normalize and checkpoint.lowercase
    assert checkpoint.max_length == 256
    assert checkpoint.backbone_config["num_layers"] == 6 and checkpoint.backbone_config["hidden_dim"] == 384
    assert checkpoint.weights_path.name == "model.safetensors"


@pytest.mark.slow
def test_pytorch_checkpoint_loads_without_pytorch():
    # A separate interpreter proves that torch is never imported (it is not installed in CI anyway).
    script = f"""
import json, sys
import numpy as np
from samtone_tf.model.pretrained import load_backbone, load_tokenizer, read_checkpoint
from samtone_tf.model.towers import EncoderTower
checkpoint = read_checkpoint({str(TINY_BERT)!r})
assert checkpoint.weights_path.name == "pytorch_model.bin"
tower = EncoderTower(load_tokenizer(checkpoint), load_backbone(checkpoint), normalize=False)
rows = [json.loads(line) for line in open({str(TINY_BERT / 'reference_embeddings.jsonl')!r})]
got = tower([row["text"] for row in rows]).numpy()
want = np.array([row["mean_pooled"] for row in rows])
print(json.dumps({{"max_error": float(np.abs(got - want).max()), "torch": "torch" in sys.modules}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPOSITORY_ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False
    assert report["max_error"] < 1e-5


def test_pytorch_reader_refuses_code_in_the_pickle(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": Payload()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        read_pytorch_state_dict(path)


def test_pytorch_reader_rejects_legacy_files(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a zip-format PyTorch checkpoint"):
        read_pytorch_state_dict(path)


def test_checkpoints_are_found_by_path_name_and_environment(tmp_path, monkeypatch):
    assert resolve_checkpoint(TINY_BERT) == TINY_BERT
    monkeypatch.setenv("SAMTONE_MODELS", str(FIXTURES))
    assert resolve_checkpoint("tiny-bert") == FIXTURES / "tiny-bert"
    with pytest.raises(FileNotFoundError, match="no checkpoint 'nope'"):
        resolve_checkpoint("nope")


def test_unsupported_or_broken_checkpoints_get_clear_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert",\n "vocab_size": }')
    with pytest.raises(ValueError, match=r"config.json:2: invalid JSON"):
        read_checkpoint(tmp_path)
    config = json.loads((TINY_BERT / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="no vocab.txt"):
        read_checkpoint(tmp_path)
    (tmp_path / "vocab.txt").write_text((TINY_BERT / "vocab.txt").read_text())
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        load_backbone(read_checkpoint(tmp_path))
    # A checkpoint whose shapes disagree with its config.
    (tmp_path / "pytorch_model.bin").write_bytes((TINY_BERT / "pytorch_model.bin").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, hidden_size=64, intermediate_size=64)))
    with pytest.raises(ValueError, match="pytorch_model.bin: the weights do not fit its config.json"):
        load_backbone(read_checkpoint(tmp_path))


def test_first_layers_of_a_checkpoint(default_checkpoint):
    checkpoint = read_checkpoint(default_checkpoint)
    full, sliced = load_backbone(checkpoint), load_backbone(checkpoint, num_layers=2)
    assert sliced.num_layers == 2
    for name in ("token_embedding", "transformer_layer_0", "transformer_layer_1"):
        for a, b in zip(full.get_layer(name).weights, sliced.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="num_layers must be between 1 and 6"):
        load_backbone(checkpoint, num_layers=7)
