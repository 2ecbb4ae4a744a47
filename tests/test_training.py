"""The library's training pieces: TrainConfig, the step on tokenised batches (no strings in the replica step),
and one code path with Keras fit."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.data.pipeline import training_dataset
from samtone_tf.data.records import TrainingPair
from samtone_tf.model.towers import tiny_dual_encoder
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.step import compile_for_training, make_train_step, split_batch
from tests.helpers import REPOSITORY_ROOT, TINY_VOCABULARY, WORDS, free_ports, mirrored_strategy
from tests.varied_length_training import train_on_varied_lengths


def pairs(count=24, seed=0):
    rng = np.random.default_rng(seed)
    return [TrainingPair(f"q{i}", " ".join(rng.choice(WORDS, 4)), f"d{i}", " ".join(rng.choice(WORDS, 9)),
                         (" ".join(rng.choice(WORDS, 7)), " ".join(rng.choice(WORDS, 5))))
            for i in range(count)]


def test_train_config_validates_and_round_trips_through_json():
    config = TrainConfig(architecture="ade_spl", same_tower="both", bidirectional=True, steps=30,
                         eval_datasets="wikiqa,beir:scifact")
    assert config.warmup_steps == 3 and config.eval_datasets == ["wikiqa", "beir:scifact"]
    again = TrainConfig.from_json(config.to_json())
    assert again == config
    assert TrainConfig.from_dict({**json.loads(config.to_json()), "a_key_of_another_version": 1}) == config
    for bad in (dict(steps=0), dict(batch_size=-1), dict(architecture="xde"), dict(same_tower="both"),
                dict(temperature=0.0), dict(hard_negatives=-1), dict(optimizer="sgd")):
        with pytest.raises(ValueError, match="invalid training configuration"):
            TrainConfig(**bad)


def _batch(hard=True):
    dataset = training_dataset(pairs(), 8, seed=0, hard_negatives=2 if hard else 0)
    return next(iter(dataset))


@pytest.mark.parametrize("warmup_steps, steps", [(2, 10), (0, 4), (3, 4), (1, 2)])
def test_the_schedule_warms_up_then_decays_and_gives_every_step_a_positive_rate(warmup_steps, steps):
    # The rate of 1-based step n: a line from 0 to the peak at the end of warm-up, the peak again on the first
    # step after it, then a line to 0 one step after the last.
    config = TrainConfig(steps=steps, warmup_steps=warmup_steps, learning_rate=2e-3)
    rates = np.array([float(config.schedule(iterations)) for iterations in range(steps + 2)], np.float64)
    n = np.arange(1, steps + 3, dtype=np.float64)
    if warmup_steps == 0:
        expected = np.interp(n, [1, steps + 1], [1, 0])
    else:
        expected = np.interp(n, [0, warmup_steps, warmup_steps + 1, steps + 1], [0, 1, 1, 0])
    np.testing.assert_allclose(rates, 2e-3 * expected, rtol=1e-6, atol=1e-12)
    assert np.all(rates[:steps] > 0), "a step of the run takes the rate 0 and changes no weight"
    assert rates[steps] == 0 and rates[steps + 1] == 0


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["sde", "ade_spl"])
def test_a_step_on_tokenised_batches_equals_the_step_on_raw_strings(architecture):
    config = TrainConfig(model="tiny", architecture=architecture, batch_size=8, hard_negatives=2, steps=5,
                         learning_rate=1e-3, learnable_temperature=True)
    batch = _batch()
    results = []
    for tokenized in (False, True):
        # Dropout off: its masks depend on the padded shapes, which differ between the two paths.
        model = tiny_dual_encoder(TINY_VOCABULARY, architecture, learnable_temperature=True, dropout=0.0)
        compile_for_training(model, config)
        inputs = batch
        if tokenized:
            texts, ids = split_batch(batch)
            inputs = {**model.tokenize_inputs(texts, length_bucket=32), **ids}  # padding beyond the longest
            assert not [k for k, v in inputs.items() if v.dtype == tf.string and not k.endswith(("_id", "_ids"))]
        step = make_train_step(tf.distribute.get_strategy(), model)
        losses = [step(inputs) for _ in range(3)]
        results.append((losses, [w.numpy() for w in model.trainable_weights]))
    (raw_losses, raw_weights), (token_losses, token_weights) = results
    np.testing.assert_allclose(token_losses, raw_losses, atol=1e-5)
    assert raw_losses[2] < raw_losses[0]
    for got, want in zip(token_weights, raw_weights):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_the_traced_replica_step_has_no_string_op():
    config = TrainConfig(model="tiny", batch_size=8, hard_negatives=2, steps=5)
    model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
    compile_for_training(model, config)
    dataset = training_dataset(pairs(), 8, seed=0, hard_negatives=2, tokenize=model.tokenize_inputs)
    batch = next(iter(dataset))
    x, ids = split_batch(batch)
    assert all(value.dtype == tf.int64 for value in ids.values())  # the pipeline fingerprints the ids

    @tf.function
    def replica_step(x, ids):
        return model.train_step((x, ids))

    graph = replica_step.get_concrete_function(x, ids).graph
    functions = [graph.as_graph_def().node] + [f.node_def for f in graph.as_graph_def().library.function]
    string_ops = sorted({node.op for nodes in functions for node in nodes
                         if node.op.startswith(("String", "Regex", "Wordpiece", "NormalizeUTF8", "Lookup"))
                         or any(value.type == tf.string.as_datatype_enum for value in node.attr.values())})
    assert not string_ops, string_ops


@pytest.mark.slow
def test_the_command_step_is_keras_fit_step():
    config = TrainConfig(model="tiny", batch_size=8, steps=5, learning_rate=1e-3)
    batch = _batch(hard=False)
    weights = []
    for use_fit in (False, True):
        keras.utils.set_random_seed(3)
        model = tiny_dual_encoder(TINY_VOCABULARY, "ade")
        compile_for_training(model, config)
        if use_fit:
            x, y = split_batch(batch)
            model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(2), epochs=1, verbose=0)
        else:
            step = make_train_step(tf.distribute.get_strategy(), model)
            step(batch)
            step(batch)
        weights.append([w.numpy() for w in model.trainable_weights])
    for got, want in zip(*weights):
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 2])
def test_given_the_datasets_element_spec_the_step_traces_once_for_every_batch_length(replicas):
    # What the training command does: without the spec, the step traced again on the first batch of a new
    # length, doubling the start-up of every run.
    strategy = mirrored_strategy(replicas) if replicas > 1 else tf.distribute.get_strategy()
    lengths, traces = train_on_varied_lengths(strategy)
    assert len(set(lengths)) > 1, "the batches should differ in length"
    assert traces == 1


@pytest.mark.slow
def test_on_two_workers_the_step_traces_once_for_every_batch_length(tmp_path):
    # A multi-worker dataset's own spec has no batch size; the training command fills it in
    # (pipeline.per_replica_element_spec), else every multi-worker run traced twice.
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT), TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, str(REPOSITORY_ROOT / "tests" / "varied_length_training.py"),
             str(tmp_path / f"w{index}.json")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    for index in range(2):
        record = json.loads((tmp_path / f"w{index}.json").read_text())
        assert len(set(record["lengths"])) > 1, "the batches should differ in length"
        assert record["traces"] == 1, record
