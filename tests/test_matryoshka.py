"""Matryoshka SamToNe: the weighted sum of the loss at prefixes of the embeddings (re-normalised), against the
float64 reference at every prefix, with every SamToNe variant; exact across 2 uneven replicas and under gradient
caching; the training command's options."""

import zlib

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.keras_loss import SamToNeLoss
from samtone_tf.losses import matryoshka_dimensions, matryoshka_samtone_loss, samtone_loss
from tests.reference_loss import finite_difference_gradient, reference_samtone
from tests.test_losses import unit_rows, valid_combinations

BATCH, HARD, DIM, TAU = 6, 2, 6, 0.1
DIMS, WEIGHTS = [4, 2], [1.0, 0.5, 2.0]  # prefixes 6 (full), 4, 2
QUERY_IDS = np.array([10, 11, 11, 12, 13, 14])
DOCUMENT_IDS = np.array(["a", "b", "c", "d", "a", "e"])
HARD_NEGATIVE_IDS = np.array([["a", "x"], ["c", "y"], ["p", "q"], ["b", "z"], ["r", "s"], ["t", "u"]])


def reference_matryoshka(q, p, h=None, *, dims, weights, **options):
    """Σ_d w_d · reference_samtone at prefix d (a shorter prefix re-normalised), float64."""
    def prefix(x, d):
        if x is None or d == q.shape[-1]:
            return x
        x = np.asarray(x, np.float64)[..., :d]
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    return sum(w * reference_samtone(prefix(q, d), prefix(p, d), prefix(h, d), **options)
               for d, w in zip(dims, weights))


@pytest.mark.parametrize("same_tower,bidirectional,hard,ids", list(valid_combinations()))
def test_loss_and_gradients_match_the_float64_reference_at_every_prefix(same_tower, bidirectional, hard, ids):
    rng = np.random.default_rng(zlib.crc32(repr((same_tower, bidirectional, hard, ids)).encode()))
    q, p = unit_rows(rng, BATCH, DIM), unit_rows(rng, BATCH, DIM)
    h = unit_rows(rng, BATCH, HARD, DIM) if hard else None
    id_args = dict(query_ids=QUERY_IDS, document_ids=DOCUMENT_IDS) if ids else {}
    if ids and hard:
        id_args["hard_negative_ids"] = HARD_NEGATIVE_IDS
    options = dict(same_tower=same_tower, bidirectional=bidirectional)
    variables = [tf.Variable(x, dtype=tf.float32) for x in (q, p) + ((h,) if hard else ())]
    with tf.GradientTape() as tape:
        loss = matryoshka_samtone_loss(*variables, dimensions=DIMS, weights=WEIGHTS, temperature=TAU, **options,
                                       **id_args)
        total = tf.reduce_sum(loss)
    grads = tape.gradient(total, variables)
    dims, weights = matryoshka_dimensions(DIM, DIMS, WEIGHTS)
    assert dims == [6, 4, 2]

    def total_reference(*arrays):
        return reference_matryoshka(*arrays, dims=dims, weights=weights, tau=TAU, **options, **id_args).sum()

    expected = reference_matryoshka(q, p, h, dims=dims, weights=weights, tau=TAU, **options, **id_args)
    np.testing.assert_allclose(loss.numpy(), expected, atol=2e-5, rtol=0)
    arrays = [q, p] + ([h] if hard else [])
    for got, want in zip(grads, finite_difference_gradient(total_reference, arrays)):
        np.testing.assert_allclose(got.numpy(), want, atol=2e-4, rtol=0)


def test_the_full_dimension_alone_is_the_plain_loss_and_a_prefix_differs():
    rng = np.random.default_rng(0)
    q, p = unit_rows(rng, BATCH, DIM).astype(np.float32), unit_rows(rng, BATCH, DIM).astype(np.float32)
    plain = samtone_loss(q, p, temperature=TAU).numpy()
    np.testing.assert_array_equal(matryoshka_samtone_loss(q, p, dimensions=[DIM], temperature=TAU).numpy(), plain)
    only_prefix = matryoshka_samtone_loss(q, p, dimensions=[3], weights=[0.0, 1.0], temperature=TAU).numpy()
    np.testing.assert_allclose(only_prefix, reference_samtone(q[:, :3] / np.linalg.norm(q[:, :3], axis=1)[:, None],
                                                              p[:, :3] / np.linalg.norm(p[:, :3], axis=1)[:, None],
                                                              tau=TAU, same_tower="query", bidirectional=False),
                               atol=1e-5)
    assert not np.allclose(only_prefix, plain)


@pytest.mark.parametrize("dims,weights,message", [
    ([0], None, "must be in 1..6"), ([7], None, "must be in 1..6"), ([4], [1.0], "1 matryoshka weights for 2"),
    ([4], [0.0, 0.0], "one of them positive"), ([4], [1.0, -1.0], "non-negative")])
def test_bad_dimensions_and_weights_are_refused(dims, weights, message):
    with pytest.raises(ValueError, match=message):
        matryoshka_dimensions(DIM, dims, weights)


def test_the_keras_loss_takes_the_prefixes_and_keeps_them_in_its_config():
    loss = SamToNeLoss(temperature=TAU, matryoshka_dims=DIMS, matryoshka_weights=WEIGHTS)
    again = SamToNeLoss.from_config(loss.get_config())
    assert (again.matryoshka_dims, again.matryoshka_weights) == (DIMS, WEIGHTS)
    rng = np.random.default_rng(1)
    q, p = unit_rows(rng, BATCH, DIM).astype(np.float32), unit_rows(rng, BATCH, DIM).astype(np.float32)
    got = float(loss(None, {"query": q, "document": p}))
    want = reference_matryoshka(q, p, dims=[6, 4, 2], weights=WEIGHTS, tau=TAU, same_tower="query",
                                bidirectional=False).mean()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("same_tower,bidirectional,hard,ids", [("query", False, True, True),
                                                               ("both", True, True, True)])
def test_two_uneven_replicas_equal_one_device(same_tower, bidirectional, hard, ids):
    from tests.helpers import mirrored_strategy

    strategy = mirrored_strategy(2)
    rng = np.random.default_rng(3)
    q, p = unit_rows(rng, 5, DIM).astype(np.float32), unit_rows(rng, 5, DIM).astype(np.float32)
    h = unit_rows(rng, 5, HARD, DIM).astype(np.float32)
    query_ids, document_ids = np.array([0, 1, 0, 3, 1]), np.array([0, 1, 2, 3, 4])
    options = dict(same_tower=same_tower, bidirectional=bidirectional, temperature=TAU, dimensions=DIMS,
                   weights=WEIGHTS, query_ids=query_ids, document_ids=document_ids)
    expected = reference_matryoshka(q, p, h, dims=[6, 4, 2], weights=WEIGHTS, tau=TAU, same_tower=same_tower,
                                    bidirectional=bidirectional, query_ids=query_ids, document_ids=document_ids)
    variables = [tf.Variable(a) for a in (q, p, h)]
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(matryoshka_samtone_loss(*variables, **options))
    expected_grads = [g.numpy() for g in tape.gradient(total, variables)]
    starts = [0, 3, 5]  # 3 rows and 2 rows
    arrays = {"q": q, "p": p, "h": h, "query_ids": query_ids, "document_ids": document_ids}
    parts = strategy.experimental_distribute_values_from_function(
        lambda c: {k: v[starts[c.replica_id_in_sync_group]:starts[c.replica_id_in_sync_group + 1]]
                   for k, v in arrays.items()})

    @tf.function
    def step(part):
        def replica_fn(part):
            embeddings = [part["q"], part["p"], part["h"]]
            with tf.GradientTape() as tape:
                tape.watch(embeddings)
                losses = matryoshka_samtone_loss(*embeddings, **{**options, "query_ids": part["query_ids"],
                                                                "document_ids": part["document_ids"]})
                total = tf.reduce_sum(losses)
            return losses, tape.gradient(total, embeddings)

        return strategy.run(replica_fn, args=(part,))

    losses, grads = step(parts)
    got = np.concatenate([x.numpy() for x in strategy.experimental_local_results(losses)])
    np.testing.assert_allclose(got, expected, atol=2e-5)
    for got_grad, want in zip(grads, expected_grads):
        got_grad = np.concatenate([x.numpy() for x in strategy.experimental_local_results(got_grad)])
        np.testing.assert_allclose(got_grad, want, atol=2e-4)


def test_gradient_caching_gives_the_uncached_loss_and_gradients():
    from samtone_tf.data.pipeline import training_dataset
    from samtone_tf.model.towers import tiny_dual_encoder
    from samtone_tf.training.config import TrainConfig
    from samtone_tf.training.gradient_cache import gradient_cached_gradients
    from samtone_tf.training.step import compile_for_training, split_batch
    from tests.helpers import TINY_VOCABULARY, varied_length_pairs

    config = TrainConfig(model="tiny", batch_size=8, hard_negatives=1, steps=10, projection_dim=16,
                         matryoshka_dims=[8, 4], matryoshka_weights=[1.0, 0.5, 0.25], same_tower="both",
                         bidirectional=True)
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade_spl", seed=1, dropout=0.0, projection_dim=16)
    compile_for_training(model, config)
    assert model.loss.matryoshka_dims == [8, 4]
    batch = next(iter(training_dataset(varied_length_pairs(16, hard_negatives=1), 8, seed=0, hard_negatives=1,
                                       tokenize=model.tokenize_inputs)))
    x, y = split_batch(batch)
    with tf.GradientTape() as tape:
        outputs = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=outputs)
    want = tape.gradient(loss, model.trainable_variables)
    got_loss, got = gradient_cached_gradients(model, x, y, chunk=3)
    np.testing.assert_allclose(float(got_loss), float(loss), rtol=1e-5)
    for g, w, v in zip(got, want, model.trainable_variables):
        np.testing.assert_allclose(np.asarray(g), np.asarray(tf.convert_to_tensor(w)), rtol=2e-5, atol=2e-5,
                                   err_msg=v.path)


def test_the_training_command_takes_the_prefixes_and_checks_them_against_the_model(tmp_path):
    from samtone_tf.train import build_parser, resolve_config
    from samtone_tf.training.config import TrainConfig

    args = build_parser().parse_args(["--model", "tiny", "--matryoshka_dims", "16,8", "--matryoshka_weights",
                                      "1,0.5,0.25", "--model_dir", str(tmp_path / "run")])
    config = resolve_config(args)
    assert (config.matryoshka_dims, config.matryoshka_weights) == ([16, 8], [1.0, 0.5, 0.25])
    assert TrainConfig.from_json(config.to_json()).matryoshka_dims == [16, 8]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--matryoshka_dims", "16,,8"])
    with pytest.raises(ValueError, match="matryoshka_weights must be"):
        TrainConfig(matryoshka_weights=[1.0])
    from samtone_tf.model.towers import tiny_dual_encoder
    from samtone_tf.training.step import compile_for_training
    from tests.helpers import TINY_VOCABULARY

    with pytest.raises(ValueError, match=r"must be in 1\.\.32"):  # the tiny towers are 32 wide
        compile_for_training(tiny_dual_encoder(TINY_VOCABULARY, "sde"), TrainConfig(model="tiny",
                                                                                   matryoshka_dims=[64]))


def test_equal_to_sentence_transformers_matryoshka_loss_on_the_same_embeddings():
    """Query-side SamToNe is MNRL(directions=("query_to_doc", "query_to_query")); wrapped in MatryoshkaLoss, it
    truncates and re-normalises as ours does. Skipped where sentence-transformers is not installed."""
    torch = pytest.importorskip("torch")
    losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")

    class Given(torch.nn.Module):  # the "model": returns the embeddings it is given
        def forward(self, features):
            return {"sentence_embedding": features["embedding"]}

        def get_embedding_dimension(self):
            return 32

    rng = np.random.default_rng(5)
    q, p = unit_rows(rng, 16, 32), unit_rows(rng, 16, 32)
    model = Given()
    peer = losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(
        model, scale=1 / TAU, directions=("query_to_doc", "query_to_query")), matryoshka_dims=[32, 16, 8],
        matryoshka_weights=[1.0, 0.5, 0.25])
    theirs = float(peer([{"embedding": torch.tensor(q, dtype=torch.float32)},
                         {"embedding": torch.tensor(p, dtype=torch.float32)}], None))
    ours = float(np.mean(matryoshka_samtone_loss(q.astype(np.float32), p.astype(np.float32), dimensions=[16, 8],
                                                 weights=[1.0, 0.5, 0.25], temperature=TAU)))
    assert abs(ours - theirs) <= 1e-5
