"""--compute_dtype bfloat16: the network in bf16 (Keras's mixed_bfloat16 policy on a copy of the model), the
embeddings float32 and L2-normalised, close to float32's; through evaluate and export; refused for an export."""

import json

import numpy as np
import pytest

from samtone_tf import evaluate as evaluate_command
from samtone_tf import export as export_command
from samtone_tf.model.towers import tiny_dual_encoder
from samtone_tf.models import with_compute_dtype
from samtone_tf.serving import run_like_tf_serving
from tests.helpers import TINY_VOCABULARY

TEXTS = ["Ça va? naïve café", "", "who wrote hamlet " * 30, "The Normans gave their name to Normandy."]


@pytest.mark.parametrize("architecture", ["sde", "ade_spl"])
def test_bf16_embeddings_are_float32_unit_vectors_close_to_float32s(architecture):
    model = tiny_dual_encoder(TINY_VOCABULARY, architecture, projection_dim=16 if architecture == "ade_spl" else None)
    bf16 = with_compute_dtype(model, "bfloat16", warn=lambda message: None)
    assert bf16.query_tower.backbone.dtype_policy.name == "mixed_bfloat16"
    assert with_compute_dtype(model, "float32") is model
    for side in ("queries", "documents"):
        want, got = getattr(model, f"encode_{side}")(TEXTS), getattr(bf16, f"encode_{side}")(TEXTS)
        assert got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.min(np.sum(got * want, axis=1)) >= 0.999  # bf16 keeps 8 significant bits
        assert not np.array_equal(got, want)  # it did compute in bf16
    for got, want in zip(bf16.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_a_cpu_without_native_bf16_is_warned(monkeypatch):
    from samtone_tf.training import step

    monkeypatch.setattr(step, "cpu_has_native_bf16", lambda: False)
    said = []
    with_compute_dtype(tiny_dual_encoder(TINY_VOCABULARY, "sde"), "bfloat16", warn=said.append)
    assert said and "emulated" in said[0]


def test_the_commands_take_it_and_an_export_refuses_it(tmp_path, tiny_model_dir, shared_data, capsys):
    out = tmp_path / "e"
    assert export_command.main(["--model_dir", str(tiny_model_dir), "--out", str(out), "--compute_dtype",
                                "bfloat16"]) == 0
    served = run_like_tf_serving(out / "query_encoder" / "1", TEXTS)["embedding"]
    assert served.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    result = tmp_path / "m.json"
    assert evaluate_command.main(["--model", str(tiny_model_dir), "--dataset", "wikiqa", "--compute_dtype",
                                  "bfloat16", "--out", str(result)]) == 0
    assert json.loads(result.read_text())["metrics"]["MRR@10"] > 0
    assert evaluate_command.main(["--model", str(out), "--dataset", "wikiqa", "--compute_dtype", "bfloat16",
                                  "--out", str(tmp_path / "n.json")]) != 0
    assert "an export computes in the dtype it was exported in" in capsys.readouterr().err
