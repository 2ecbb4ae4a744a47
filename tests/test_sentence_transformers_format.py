"""`export --format sentence-transformers`: a directory sentence-transformers loads offline. Checked without PyTorch
(names, shapes and values read back by keras_hub's own Hugging Face converter, bit-exact; the Dense and module
files), and, where sentence-transformers is installed (an optional test dependency), against the embeddings of
our SavedModel on accented, long and empty texts."""

import json
import shutil

import keras_hub
import numpy as np
import pytest
from safetensors.numpy import load_file

from samtone_tf import export as export_command
from samtone_tf.locations import REPOSITORY_ROOT
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint, read_checkpoint
from samtone_tf.model.sentence_transformers_format import (bert_state_dict, model_card, towers_are_one_function,
                                                           write_sentence_transformers)
from samtone_tf.ownership import MARKER
from samtone_tf.serving import export, run_like_tf_serving

TINY_BERT = REPOSITORY_ROOT / "tests" / "fixtures" / "tiny-bert"
BEFORE_FOLDERS = REPOSITORY_ROOT / "tests" / "fixtures" / "run-before-folders"
TEXTS = ["Ça va? Naïve café, Ångström and São Paulo", "", "who wrote hamlet and when " * 30, "A", "  spaces  "]


def asymmetric_model():
    """ADE-SPL at two lengths with a random shared projection, the document backbone perturbed: every route
    mix-up changes the embeddings."""
    model = dual_encoder_from_checkpoint(str(TINY_BERT), architecture="ade_spl", projection_dim=16,
                                         query_max_length=16, document_max_length=48)
    rng = np.random.default_rng(0)
    for variable in model.document_tower.backbone.get_layer("transformer_layer_1").weights:
        variable.assign(variable.numpy() + rng.normal(scale=0.05, size=variable.shape).astype(np.float32))
    return model


def symmetric_model():
    return dual_encoder_from_checkpoint(str(TINY_BERT), architecture="sde", query_max_length=40,
                                        document_max_length=40)


def test_the_weights_read_back_by_keras_hubs_converter_are_the_kerass_bit_for_bit(tmp_path):
    model = asymmetric_model()
    out = tmp_path / "st"
    write_sentence_transformers(model, out)
    for route, tower in (("query_0_Transformer", model.query_tower), ("document_0_Transformer",
                                                                      model.document_tower)):
        back = keras_hub.models.BertBackbone.from_preset(str(out / route))
        assert [w.path for w in back.weights] == [w.path for w in tower.backbone.weights]
        for got, want in zip(back.weights, tower.backbone.weights):
            np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.path)
        written = load_file(str(out / route / "model.safetensors"))
        assert written.keys() == bert_state_dict(tower.backbone).keys()
        assert written["encoder.layer.0.attention.self.query.weight"].shape == (32, 32)  # [out, in]
        assert written["encoder.layer.0.intermediate.dense.weight"].shape == (64, 32)
    dense = load_file(str(out / "query_2_Dense" / "model.safetensors"))["linear.weight"]
    np.testing.assert_array_equal(dense, model.query_tower.projection.kernel.numpy().T)
    router = json.loads((out / "router_config.json").read_text())
    assert router["structure"] == {"query": ["query_0_Transformer", "query_1_Pooling", "query_2_Dense"],
                                   "document": ["document_0_Transformer", "document_1_Pooling", "query_2_Dense"]}
    assert not (out / "document_2_Dense").exists()  # ADE-SPL's projection: one module, both routes
    assert [m["path"] for m in json.loads((out / "modules.json").read_text())] == ["", "1_Normalize"]
    assert json.loads((out / "query_0_Transformer" / "sentence_bert_config.json").read_text())["max_seq_length"] == 16
    assert json.loads((out / "document_0_Transformer" / "sentence_bert_config.json").read_text())[
        "max_seq_length"] == 48


def test_a_symmetric_model_is_one_pipeline_that_our_own_reader_loads_back_to_the_same_embeddings(tmp_path):
    model = symmetric_model()
    assert towers_are_one_function(model)
    out = tmp_path / "st"
    assert write_sentence_transformers(model, out) == ["", "1_Pooling", "2_Normalize"]
    checkpoint = read_checkpoint(str(out))  # the reverse direction, torch-free
    assert (checkpoint.max_length, checkpoint.pooling, checkpoint.normalize) == (40, "mean", True)
    back = dual_encoder_from_checkpoint(str(out), architecture="sde")
    np.testing.assert_allclose(back.encode_documents(TEXTS), model.encode_documents(TEXTS), atol=1e-6)


def test_the_model_card_names_the_base_the_data_the_loss_and_the_metrics():
    model = symmetric_model()
    config = json.loads((BEFORE_FOLDERS / "config.json").read_text())
    card = model_card(model, base_checkpoint="all-MiniLM-L6-v2", training_config=config,
                      metrics={"wikiqa": {"MRR@10": 0.7351, "P@1": 0.62, "queries": 243}})
    assert card.startswith("---\nlibrary_name: sentence-transformers")
    for expected in ("Base checkpoint: all-MiniLM-L6-v2", f"Data: {config['dataset']}", "SamToNe",
                     "arXiv:2306.02516", f"same_tower={config['same_tower']}", "| wikiqa | MRR@10 | 0.7351 |"):
        assert expected in card, expected
    assert "| wikiqa | queries |" in card  # counts shown too, as numbers


def test_the_command_writes_whole_with_a_card_and_refuses_what_is_not_ours(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(BEFORE_FOLDERS, run)
    out = tmp_path / "st"
    assert export_command.main(["--model_dir", str(run), "--format", "sentence-transformers", "--out", str(out)]) == 0
    assert "a query and a document route" in capsys.readouterr().out  # ADE-SPL
    assert (out / MARKER).is_file() and "Base checkpoint: tiny" in (out / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".incomplete")]
    # Again without --overwrite: refused, the directory kept; with it: replaced.
    assert export_command.main(["--model_dir", str(run), "--format", "sentence-transformers", "--out", str(out)]) != 0
    assert "--overwrite" in capsys.readouterr().err
    assert export_command.main(["--model_dir", str(run), "--format", "sentence-transformers", "--out", str(out),
                                "--overwrite"]) == 0
    # A directory that is not ours is never written into, even with --overwrite.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert export_command.main(["--model_dir", str(run), "--format", "sentence-transformers", "--out", str(theirs),
                                "--overwrite"]) != 0
    assert "refusing" in capsys.readouterr().err and (theirs / "notes.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        export_command.main(["--model_dir", str(run), "--format", "sentence-transformers", "--out", str(out),
                             "--corpus", "beir:scifact"])


@pytest.mark.slow
@pytest.mark.parametrize("build", [symmetric_model, asymmetric_model], ids=["sde", "ade_spl"])
def test_sentence_transformers_embeds_as_our_saved_model(tmp_path, build):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = build()
    write_sentence_transformers(model, tmp_path / "st")
    export(model, tmp_path / "export", verbose=False)
    loaded = sentence_transformers.SentenceTransformer(str(tmp_path / "st"), device="cpu", local_files_only=True)
    for side, encode in (("query", loaded.encode_query), ("document", loaded.encode_document)):
        theirs = np.asarray(encode(TEXTS, convert_to_numpy=True, batch_size=2), np.float64)
        ours = np.asarray(run_like_tf_serving(tmp_path / "export" / f"{side}_encoder" / "1", TEXTS)["embedding"],
                          np.float64)
        cosine = np.sum(theirs * ours, axis=1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(ours, axis=1)
        assert cosine.min() >= 0.99999, (side, cosine)
