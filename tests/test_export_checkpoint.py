"""`export --model NAME_OR_PATH`: any model evaluate takes, exported as a training run's export is (versioned,
whole or absent, `export --check` passes): a published checkpoint behind TF Serving without training it."""

import json
import shutil

import numpy as np
import pytest

from samtone_tf import export as export_command
from samtone_tf.locations import REPOSITORY_ROOT
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint, read_checkpoint
from samtone_tf.serving import ExportedEncoder, check_export, run_like_tf_serving

TINY_BERT = REPOSITORY_ROOT / "tests" / "fixtures" / "tiny-bert"
BEFORE_FOLDERS = REPOSITORY_ROOT / "tests" / "fixtures" / "run-before-folders"
TEXTS = ["Ça va? naïve café", "", "who wrote hamlet " * 40]


def assert_checks_pass(out):
    problems = [(name, problem) for name, _, problem in check_export(out) if problem is not None]
    assert not problems, problems


def test_a_local_checkpoint_exports_as_an_untrained_sde_at_the_lengths_asked(tmp_path, capsys):
    out = tmp_path / "exports" / "tiny"
    code = export_command.main(["--model", str(TINY_BERT), "--out", str(out), "--query_max_length", "16",
                                "--document_max_length", "48"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["architecture"] == "sde"
    assert (manifest["query_max_length"], manifest["document_max_length"]) == (16, 48)
    assert manifest["source"] == {"kind": "pretrained checkpoint (untrained SDE)", "model": str(TINY_BERT)}
    assert manifest["training_config"] is None
    assert_checks_pass(out)
    # The served embeddings are the checkpoint's, at those lengths.
    reference = dual_encoder_from_checkpoint(str(TINY_BERT), architecture="sde", query_max_length=16,
                                             document_max_length=48)
    exported = ExportedEncoder(out)
    np.testing.assert_allclose(exported.encode_queries(TEXTS, verbose=False), reference.encode_queries(TEXTS),
                               atol=1e-5)
    np.testing.assert_allclose(exported.encode_documents(TEXTS, verbose=False), reference.encode_documents(TEXTS),
                               atol=1e-5)
    served = run_like_tf_serving(out / "document_encoder" / "1", TEXTS)["embedding"]
    np.testing.assert_allclose(served, reference.encode_documents(TEXTS), atol=1e-5)
    # Exported again: the next version, the first kept.
    assert export_command.main(["--model", str(TINY_BERT), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"] == [1, 2] and (out / "query_encoder" / "1" / "saved_model.pb").is_file()
    checkpoint_length = read_checkpoint(str(TINY_BERT)).max_length  # without lengths asked: the checkpoint's
    assert (manifest["query_max_length"], manifest["document_max_length"]) == (checkpoint_length, checkpoint_length)


def test_a_keras_file_exports_with_its_own_lengths(tmp_path):
    out = tmp_path / "exports" / "keras"
    assert export_command.main(["--model", str(BEFORE_FOLDERS / "model.keras"), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["kind"] == ".keras file" and manifest["architecture"] == "ade_spl"
    assert_checks_pass(out)
    reference = json.loads((BEFORE_FOLDERS / "reference_embeddings.json").read_text())
    got = ExportedEncoder(out).encode_documents(reference["texts"], verbose=False)
    np.testing.assert_allclose(got, reference["documents"], atol=1e-5)


def test_lengths_for_a_trained_model_and_an_export_as_the_model_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(BEFORE_FOLDERS, run)
    with pytest.raises(SystemExit) as exit_info:
        export_command.main(["--model_dir", str(run), "--out", str(tmp_path / "e"), "--query_max_length", "8"])
    assert exit_info.value.code == 2 and "keeps the lengths it was trained at" in capsys.readouterr().err
    assert export_command.main(["--model", str(run), "--out", str(tmp_path / "e"),
                                "--document_max_length", "8"]) != 0
    assert "trained model, whose towers keep the lengths" in capsys.readouterr().err
    out = tmp_path / "exports" / "first"
    assert export_command.main(["--model", str(BEFORE_FOLDERS / "model.keras"), "--out", str(out)]) == 0
    assert export_command.main(["--model", str(out), "--out", str(tmp_path / "again")]) != 0
    assert "an export already" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


@pytest.mark.slow
def test_the_readme_commands_serve_a_published_checkpoint_by_name(tmp_path, default_checkpoint, capsys):
    """README, "Serving a published checkpoint": the name resolves under the models directory."""
    out = tmp_path / "exports" / "minilm"
    assert export_command.main(["--model", "all-MiniLM-L6-v2", "--out", str(out)]) == 0
    assert export_command.main(["--check", str(out)]) == 0
    assert "2 of 2 models load and serve as under TensorFlow Serving" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["model"] == "all-MiniLM-L6-v2" and manifest["dimension"] == 384
    reference = dual_encoder_from_checkpoint(str(default_checkpoint), architecture="sde")
    np.testing.assert_allclose(ExportedEncoder(out).encode_queries(TEXTS, verbose=False),
                               reference.encode_queries(TEXTS), atol=1e-5)
