"""Towers and the five dual-encoder architectures on a tiny real BERT."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from samtone_tf import SamToNeLoss
from samtone_tf.model.towers import DualEncoder, masked_mean, tiny_dual_encoder
from samtone_tf.options import ARCHITECTURES
from tests.helpers import mirrored_strategy

QUERIES = ["who sat on the mat", "what is the dog", "where was the cat", "when did dogs sit"]
DOCUMENTS = ["the cat sat on the mat.", "a dog is a dog", "in the mat", "dogs sat, cats sat"]


def batch():
    return {"query": tf.constant(QUERIES), "document": tf.constant(DOCUMENTS)}


def variable_ids(layer):
    return {id(v) for v in layer.weights}


def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.fixture
def models(tiny_vocabulary):
    return {arch: tiny_dual_encoder(tiny_vocabulary, arch) for arch in ARCHITECTURES}


def test_tiny_configuration_builds_and_returns_normalised_embeddings(tiny_vocabulary):
    model = tiny_dual_encoder(tiny_vocabulary, "ade")
    negatives = tf.constant([["the mat", "a cat"]] * 4)
    out = model(dict(batch(), hard_negatives=negatives))
    assert out["query"].shape == (4, 32) and out["document"].shape == (4, 32)
    assert out["hard_negatives"].shape == (4, 2, 32)
    np.testing.assert_allclose(np.linalg.norm(out["query"], axis=1), 1.0, atol=1e-5)
    # Hard negatives go through the document tower.
    np.testing.assert_allclose(
        out["hard_negatives"][0, 1], model.document_tower(tf.constant(["a cat"]))[0], atol=1e-5
    )


def test_sharing_of_each_architecture(models):
    def parts(model, side):
        tower = getattr(model, f"{side}_tower")
        return tower.backbone, tower.projection

    sde_q, sde_d = parts(models["sde"], "query"), parts(models["sde"], "document")
    assert sde_q[0] is sde_d[0]

    ade_q, ade_d = parts(models["ade"], "query"), parts(models["ade"], "document")
    assert not variable_ids(ade_q[0]) & variable_ids(ade_d[0])

    spl_q, spl_d = parts(models["ade_spl"], "query"), parts(models["ade_spl"], "document")
    assert spl_q[0] is not spl_d[0] and not variable_ids(spl_q[0]) & variable_ids(spl_d[0])
    assert spl_q[1] is spl_d[1] and spl_q[1] is not None

    ste_q, ste_d = parts(models["ade_ste"], "query"), parts(models["ade_ste"], "document")
    shared = variable_ids(ste_q[0]) & variable_ids(ste_d[0])
    assert shared == {id(ste_q[0].token_embedding.embeddings)}
    assert ste_q[0].token_embedding.embeddings is ste_d[0].token_embedding.embeddings

    fte_q, fte_d = parts(models["ade_fte"], "query"), parts(models["ade_fte"], "document")
    assert not variable_ids(fte_q[0]) & variable_ids(fte_d[0])
    for backbone in (fte_q[0], fte_d[0]):
        assert not backbone.token_embedding.embeddings.trainable


def test_parameter_counts_per_architecture(models):
    backbone = models["sde"].query_tower.backbone
    pooler = count(backbone.get_layer("pooled_dense").weights)  # unused by towers: frozen
    per_backbone = count(backbone.weights) - pooler
    embedding = count([backbone.token_embedding.embeddings])
    hidden = backbone.hidden_dim
    expected_trainable = {
        "sde": per_backbone,
        "ade": 2 * per_backbone,
        "ade_spl": 2 * per_backbone + hidden * hidden,
        "ade_ste": 2 * per_backbone - embedding,
        "ade_fte": 2 * per_backbone - 2 * embedding,
    }
    for arch, model in models.items():
        assert count(model.trainable_weights) == expected_trainable[arch], arch
    assert count(models["ade_fte"].weights) == 2 * (per_backbone + pooler)


def train_one_step(model):
    optimizer = keras.optimizers.Adam(1e-2)
    loss_fn = SamToNeLoss(temperature=None, same_tower="both", bidirectional=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(None, model(batch(), training=True))
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables))
    return dict(zip([id(v) for v in variables], grads))


def test_frozen_token_embeddings_get_no_gradient_and_do_not_change(models):
    model = models["ade_fte"]
    frozen = [model.query_tower.backbone.token_embedding.embeddings,
              model.document_tower.backbone.token_embedding.embeddings]
    before = [v.numpy().copy() for v in frozen]
    others_before = [v.numpy().copy() for v in model.trainable_variables]
    grads = train_one_step(model)
    assert all(id(v) not in grads for v in frozen)
    for variable, value in zip(frozen, before):
        np.testing.assert_array_equal(variable.numpy(), value)
    changed = [not np.array_equal(v.numpy(), b) for v, b in zip(model.trainable_variables, others_before)]
    assert sum(changed) > len(changed) // 2


def test_shared_token_embedding_receives_both_towers_gradients(models):
    model = models["ade_ste"]
    table = model.query_tower.backbone.token_embedding.embeddings
    before = table.numpy().copy()
    grads = train_one_step(model)
    assert id(table) in grads and sum(1 for v in model.trainable_variables if v is table) == 1
    assert not np.array_equal(table.numpy(), before)
    assert model.document_tower.backbone.token_embedding.embeddings is table


@pytest.mark.parametrize("architecture", ["sde", "ade_spl", "ade_ste"])
def test_keras_round_trip_gives_the_same_embeddings_and_sharing(tiny_vocabulary, tmp_path, architecture):
    model = tiny_dual_encoder(tiny_vocabulary, architecture, learnable_temperature=True)
    train_one_step(model)  # weights differ from any fresh initialisation
    path = tmp_path / "model.keras"
    model.save(path)
    tiny_vocabulary.unlink()  # the vocabulary must come from the archive
    restored = keras.saving.load_model(path)
    assert isinstance(restored, DualEncoder) and restored.architecture == architecture
    for side in ("query", "document"):
        np.testing.assert_allclose(restored(batch())[side], model(batch())[side], atol=1e-6)
    np.testing.assert_allclose(restored.current_temperature(), model.current_temperature(), atol=1e-7)
    if architecture == "sde":
        assert restored.query_tower.backbone is restored.document_tower.backbone
    if architecture == "ade_spl":
        assert restored.query_tower.projection is restored.document_tower.projection
    if architecture == "ade_ste":
        assert (restored.query_tower.backbone.token_embedding.embeddings
                is restored.document_tower.backbone.token_embedding.embeddings)


def test_learnable_temperature_is_trained_and_clipped(tiny_vocabulary):
    model = tiny_dual_encoder(tiny_vocabulary, "sde", learnable_temperature=True, temperature=0.05,
                              min_temperature=0.02, max_temperature=0.5)
    out = model(batch())
    np.testing.assert_allclose(out["temperature"], 0.05, rtol=1e-6)
    grads = train_one_step(model)
    assert grads[id(model.log_temperature)] is not None
    assert float(model.current_temperature()) != pytest.approx(0.05)
    model.log_temperature.assign(np.log(10.0))
    assert float(model.current_temperature()) == pytest.approx(0.5)


def test_projection_initialised_to_identity_keeps_the_pooled_embedding(tiny_vocabulary):
    plain = tiny_dual_encoder(tiny_vocabulary, "ade", seed=3)
    projected = tiny_dual_encoder(tiny_vocabulary, "ade_spl", seed=3)
    np.testing.assert_allclose(projected(batch())["query"], plain(batch())["query"], atol=1e-6)


def test_encode_returns_rows_in_input_order(tiny_vocabulary):
    model = tiny_dual_encoder(tiny_vocabulary, "ade")
    texts = DOCUMENTS * 5 + ["the"]
    encoded = model.encode_documents(texts, batch_size=3, verbose=False)
    direct = model.document_tower(tf.constant(texts)).numpy()
    assert encoded.shape == (len(texts), 32)
    np.testing.assert_allclose(encoded, direct, atol=1e-5)
    np.testing.assert_allclose(
        model.encode_queries(QUERIES, verbose=False), model.query_tower(tf.constant(QUERIES)), atol=1e-5
    )


def test_masked_mean_ignores_padding():
    sequence = tf.constant([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = tf.constant([[True, True, False]])
    np.testing.assert_allclose(masked_mean(sequence, mask), [[2.0, 3.0]])


@pytest.mark.slow
def test_fit_on_raw_strings_under_mirrored_strategy_matches_one_device(tiny_vocabulary):
    dataset = tf.data.Dataset.from_tensors(
        (batch(), {"query_id": tf.constant([0, 1, 2, 3]), "document_id": tf.constant([0, 1, 2, 3])})
    ).repeat(2)

    def fit(strategy):
        with strategy.scope():
            model = tiny_dual_encoder(tiny_vocabulary, "ade_spl", seed=5)
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=SamToNeLoss(temperature=None))
        # Dropout off, so both runs compute the same function.
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
        history = model.fit(dataset, verbose=0)
        return history.history["loss"][0], model.query_tower(tf.constant(QUERIES)).numpy()

    single_loss, single_embeddings = fit(tf.distribute.get_strategy())
    mirrored_loss, mirrored_embeddings = fit(mirrored_strategy(2))
    assert np.isfinite(single_loss)
    np.testing.assert_allclose(mirrored_loss, single_loss, atol=1e-5)
    np.testing.assert_allclose(mirrored_embeddings, single_embeddings, atol=1e-5)


def test_unknown_architecture_and_bad_temperatures_are_rejected(tiny_vocabulary):
    with pytest.raises(ValueError, match="architecture must be one of"):
        tiny_dual_encoder(tiny_vocabulary, "ade_xyz")
    with pytest.raises(ValueError, match="temperatures must satisfy"):
        tiny_dual_encoder(tiny_vocabulary, "ade", temperature=2.0, max_temperature=1.0)


@pytest.mark.parametrize("learnable", [False, True])
def test_the_model_holds_the_temperature_and_the_loss_takes_it(tiny_vocabulary, learnable):
    """One holder: the model's temperature (fixed or learnt) reaches the loss compiled with temperature=None; the
    loss equals the float64 reference at the model's temperature, not the loss's default."""
    from samtone_tf.training.config import TrainConfig
    from samtone_tf.training.step import compile_for_training
    from tests.reference_loss import reference_samtone

    model = tiny_dual_encoder(tiny_vocabulary, "ade", seed=3, temperature=0.2, learnable_temperature=learnable)
    compile_for_training(model, TrainConfig(model="tiny", temperature=0.2))
    outputs = model(batch(), training=False)
    assert float(outputs["temperature"]) == pytest.approx(0.2, rel=1e-6)
    got = float(model.loss(None, outputs))
    want = np.mean(reference_samtone(outputs["query"].numpy(), outputs["document"].numpy(), tau=0.2,
                                     same_tower="query", bidirectional=False))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_loss_given_another_temperature_than_the_models_refuses(tiny_vocabulary):
    model = tiny_dual_encoder(tiny_vocabulary, "sde", seed=3, temperature=0.05)
    with pytest.raises(ValueError, match="model's temperature 0.05 differs from the loss's 0.1"):
        SamToNeLoss(temperature=0.1)(None, model(batch(), training=False))
    SamToNeLoss(temperature=0.05)(None, model(batch(), training=False))  # the same: fine
