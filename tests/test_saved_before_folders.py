"""A model saved before the modules moved into folders (model/, training/, index/, beam/) still loads: its
model.keras names classes by their registered Keras names, and its checkpoint restores into the model its
config.json builds. Both give the embeddings recorded when it was written (tests/fixtures/run-before-folders,
written by the code of commit 9214375)."""

import json
import shutil

import keras
import numpy as np
import pytest

from samtone_tf.locations import REPOSITORY_ROOT
from samtone_tf.models import load_encoder, load_trained_model

pytestmark = pytest.mark.slow

FIXTURE = REPOSITORY_ROOT / "tests" / "fixtures" / "run-before-folders"
REFERENCE = json.loads((FIXTURE / "reference_embeddings.json").read_text())


def assert_reference_embeddings(model):
    queries = np.asarray(model.encode_queries(REFERENCE["texts"]))
    documents = np.asarray(model.encode_documents(REFERENCE["texts"]))
    np.testing.assert_allclose(queries, REFERENCE["queries"], atol=1e-5)
    np.testing.assert_allclose(documents, REFERENCE["documents"], atol=1e-5)
    assert float(keras.ops.convert_to_numpy(model.temperature)) == pytest.approx(REFERENCE["temperature"])


def test_its_model_keras_loads_with_keras_and_gives_the_recorded_embeddings():
    model = keras.saving.load_model(FIXTURE / "model.keras")
    assert type(model).__name__ == "DualEncoder" and model.architecture == "ade_spl"
    assert_reference_embeddings(model)


def test_its_checkpoint_restores_into_the_model_its_config_builds(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "model.keras").unlink()  # the checkpoint only
    config = json.loads((run / "config.json").read_text())
    config["vocabulary"] = str(REPOSITORY_ROOT / config["vocabulary"])
    (run / "config.json").write_text(json.dumps(config))
    assert_reference_embeddings(load_trained_model(run))
    assert_reference_embeddings(load_encoder(run))
