"""models.py: every way to get a dual encoder; a training model_dir loads without the pretrained weights."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from samtone_tf.model.towers import tiny_dual_encoder
from samtone_tf.models import load_encoder, load_keras_file, load_trained_model
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.step import compile_for_training
from tests.helpers import REPOSITORY_ROOT, TINY_VOCABULARY

TEXTS = ["who wrote hamlet", "Hamlet is a tragedy by Shakespeare."]


@pytest.mark.slow
def test_a_model_dir_restores_its_checkpoint_without_the_pretrained_weights(tmp_path, default_checkpoint):
    models = tmp_path / "models"
    shutil.copytree(default_checkpoint, models / default_checkpoint.name)
    env = dict(os.environ, SAMTONE_MODELS=str(models))
    trained = subprocess.run([sys.executable, "-m", "samtone_tf.train", "--model_dir", str(tmp_path / "run"),
                              "--num_layers", "1", "--steps", "2", "--batch_size", "4", "--eval_datasets", "",
                              "--no-export", "--learning_rate", "1e-3"],
                             cwd=REPOSITORY_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    want = load_keras_file(tmp_path / "run" / "model.keras").encode_queries(TEXTS, verbose=False)
    (tmp_path / "run" / "model.keras").unlink()
    for weights in (models / default_checkpoint.name).glob("*.safetensors"):
        weights.unlink()  # reading the pretrained weights now fails
    os.environ["SAMTONE_MODELS"], saved = str(models), os.environ.get("SAMTONE_MODELS")
    try:
        model = load_trained_model(tmp_path / "run")
    finally:
        if saved is None:
            del os.environ["SAMTONE_MODELS"]
        else:
            os.environ["SAMTONE_MODELS"] = saved
    np.testing.assert_allclose(model.encode_queries(TEXTS, verbose=False), want, atol=1e-5)


def test_a_pretrained_checkpoint_is_the_zero_shot_encoder(default_checkpoint):
    encoder = load_encoder(default_checkpoint)
    embeddings = encoder.encode_documents(TEXTS, verbose=False)
    assert embeddings.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    by_name = load_encoder(default_checkpoint.name)  # a name under the models directory
    np.testing.assert_allclose(by_name.encode_documents(TEXTS, verbose=False), embeddings, atol=1e-6)


def test_nothing_there_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model_dir, a .keras file, an export directory"):
        load_encoder(tmp_path / "none")


@pytest.mark.slow
def test_kerass_own_loader_reads_a_trained_model_keras_after_import_samtone_tf(tmp_path):
    # The user's path: a fresh interpreter, `import samtone_tf`, then Keras's loader on the model.keras a run
    # leaves (compiled: its optimizer, schedule and loss are named in the archive too).
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade_spl")
    compile_for_training(model, TrainConfig(model="tiny", steps=10))
    path = tmp_path / "model.keras"
    model.save(path)
    want = model.encode_queries(TEXTS, verbose=False)
    script = ("import sys, numpy as np, samtone_tf, keras; m = keras.saving.load_model(sys.argv[1]); "
              "np.save(sys.argv[2], m.encode_queries(sys.argv[3:], verbose=False)); "
              "print(type(m).__name__, type(m.optimizer).__name__)")
    loaded = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "got.npy"), *TEXTS],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["DualEncoder", type(model.optimizer).__name__]
    np.testing.assert_allclose(np.load(tmp_path / "got.npy"), want, atol=1e-6)
