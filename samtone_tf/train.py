"""python -m samtone_tf.train: train a dual encoder with SamToNe under tf.distribute.

With no arguments it trains the embedded default: all-MiniLM-L6-v2 (from
../shared/models) on ReQA pairs from SQuAD v1.1 train, with query-side SamToNe,
on one CPU in under 10 minutes, and prints P@1 and MRR on data it did not train
on (held-out SQuAD articles, WikiQA test) before and after training.

model_dir receives: config.json (the resolved configuration), checkpoints (every
--checkpoint_every steps; a killed run started again with the same command
resumes from the last one), logs/ (TensorBoard), metrics.jsonl, model.keras
(the trained model) and export/ (servable SavedModels; see export/README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import samtone_tf  # noqa: I001  (first: it sets TensorFlow's environment before TensorFlow loads)
import keras
import tensorflow as tf

from samtone_tf import distributed
from samtone_tf.atomic import atomic_write_text
from samtone_tf.data.datasets import load_evaluation, load_training_pairs
from samtone_tf.data.pipeline import distributed_training_dataset
from samtone_tf.models import build_model
from samtone_tf.serving import export
from samtone_tf.losses import samtone_loss
from samtone_tf.retrieval import evaluate_encoder

DEFAULT_EVALUATION = ("reqa:squad2-dev-sample/dev-v2.0-sample.json", "wikiqa")
EVALUATION_LABELS = {
    "reqa:squad2-dev-sample/dev-v2.0-sample.json": "SQuAD held-out articles (5, ReQA)",
    "wikiqa": "WikiQA test",
}
REPORTED = ("P@1", "MRR@10")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m samtone_tf.train", description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="reqa:squad",
                      help="training data: reqa:squad, beir:<name>, msmarco:<dir>, wikiqa, flagembedding:<file>")
    data.add_argument("--train_split", default="train", help="the split to train on")
    data.add_argument("--max_train_pairs", type=int, default=None,
                      help="use only the first N training pairs (default: steps x batch size, or all when "
                           "--epochs-like cycling is wanted: pass 0)")
    data.add_argument("--eval_datasets", default=",".join(DEFAULT_EVALUATION),
                      help="comma-separated evaluation sets (dataset names; 'name@split' picks a split); "
                           "'' for none")
    data.add_argument("--data_dir", default=None, help="benchmark data (default: $SAMTONE_DATA, then ../shared/data)")
    data.add_argument("--unique_ids", action=argparse.BooleanOptionalAction, default=True,
                      help="keep every global batch free of repeated query or document ids")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default="all-MiniLM-L6-v2",
                       help="a local Hugging Face checkpoint (name under --models_dir, or a path); 'tiny' "
                            "(2 layers, width 32, random: for tests); 'config:<json or file>' (BertBackbone "
                            "arguments, random init); 'preset:<keras_hub preset>' (downloads)")
    model.add_argument("--models_dir", default=None, help="default: $SAMTONE_MODELS, then ../shared/models")
    model.add_argument("--vocabulary", default=None,
                       help="WordPiece vocabulary for 'tiny' and 'config:' models (default: the default "
                            "checkpoint's vocab.txt)")
    model.add_argument("--num_layers", type=int, default=None,
                       help="keep only the first N transformer layers of the checkpoint (default: all)")
    model.add_argument("--architecture", default="sde", choices=("sde", "ade", "ade_spl", "ade_ste", "ade_fte"))
    model.add_argument("--projection_dim", type=int, default=None,
                       help="projection after pooling (ade_spl defaults it to the backbone width)")
    model.add_argument("--pooling", default=None, choices=("mean", "cls"), help="default: the checkpoint's")
    model.add_argument("--query_max_length", type=int, default=32)
    model.add_argument("--document_max_length", type=int, default=64)

    loss = parser.add_argument_group("loss")
    loss.add_argument("--same_tower", default="query", choices=("none", "query", "document", "both"),
                      help="SamToNe: which tower's other members join the negatives ('none': standard loss)")
    loss.add_argument("--bidirectional", action="store_true", help="add the document->query softmax")
    loss.add_argument("--temperature", type=float, default=0.05)
    loss.add_argument("--learnable_temperature", action="store_true",
                      help="learn the temperature (log scale, clipped to [0.01, 1.0]), starting at --temperature")
    loss.add_argument("--hard_negatives", type=int, default=0, help="hard negatives per pair (from the data)")

    optimization = parser.add_argument_group("optimization")
    optimization.add_argument("--batch_size", type=int, default=32,
                              help="GLOBAL batch size; each replica gets batch_size / replicas")
    optimization.add_argument("--steps", type=int, default=50)
    optimization.add_argument("--optimizer", default="adamw", choices=("adamw", "adafactor"))
    optimization.add_argument("--learning_rate", type=float, default=3e-5, help="peak learning rate")
    optimization.add_argument("--warmup_steps", type=int, default=None, help="default: 10%% of --steps")
    optimization.add_argument("--weight_decay", type=float, default=0.01, help="AdamW only")
    optimization.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("run")
    run.add_argument("--strategy", default="default", choices=("default", "mirrored", "multi_worker", "tpu"))
    run.add_argument("--cpu_replicas", type=int, default=None,
                     help="split the CPU into N logical devices (mirrored strategy without GPUs)")
    run.add_argument("--tpu", default=None, help="TPU name or address (strategy tpu)")
    run.add_argument("--model_dir", default="runs/default")
    run.add_argument("--checkpoint_every", type=int, default=50)
    run.add_argument("--eval_every", type=int, default=0, help="evaluate every N steps (0: before and after only)")
    run.add_argument("--log_every", type=int, default=10)
    run.add_argument("--eval_batch_size", type=int, default=128)
    run.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                     help="write servable SavedModels to model_dir/export when training ends")
    return parser


def resolve_config(args):
    config = dict(vars(args))
    if config["warmup_steps"] is None:
        config["warmup_steps"] = max(1, config["steps"] // 10)
    if config["max_train_pairs"] is None:
        config["max_train_pairs"] = config["steps"] * config["batch_size"]
    elif config["max_train_pairs"] == 0:
        config["max_train_pairs"] = None
    config["eval_datasets"] = [name for name in config["eval_datasets"].split(",") if name]
    config["samtone_tf_version"] = samtone_tf.__version__
    return config


def negatives_per_query(config):
    batch = config["batch_size"]
    documents = batch - 1
    queries = batch - 1 if config["same_tower"] in ("query", "both") else 0
    hard = batch * config["hard_negatives"]
    return documents, queries, hard


def main(argv=None):
    config = resolve_config(build_parser().parse_args(argv))
    try:
        return train(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def train(config):
    # First: splitting the CPU into replicas must precede any use of a device.
    strategy = distributed.make_strategy(config["strategy"], config["cpu_replicas"], config["tpu"])
    replicas = strategy.num_replicas_in_sync
    if config["batch_size"] % replicas:
        raise ValueError(f"--batch_size {config['batch_size']} is not divisible by {replicas} replicas")
    chief = distributed.is_chief(strategy)
    model_dir = Path(config["model_dir"])
    log = _Printer(chief)
    keras.utils.set_random_seed(config["seed"])

    documents, queries, hard = negatives_per_query(config)
    log(f"strategy {config['strategy']}: {replicas} replica(s); global batch {config['batch_size']} = "
        f"{replicas} x {config['batch_size'] // replicas}; each query sees {documents + queries + hard} negatives "
        f"({documents} documents + {queries} other queries + {hard} hard negatives)")

    pairs = load_training_pairs(config["dataset"], config["train_split"], config["data_dir"],
                                max_pairs=config["max_train_pairs"])
    log(f"training data {config['dataset']} ({config['train_split']}): "
        f"{len(pairs) if hasattr(pairs, '__len__') else 'streamed'} pairs")
    evaluation_sets = []
    if chief:
        for spec in config["eval_datasets"]:
            name, _, split = spec.partition("@")
            evaluation_sets.append((spec, load_evaluation(name, split or None, config["data_dir"])))

    with strategy.scope():
        model = build_model(config)
        schedule = WarmupLinearDecay(config["learning_rate"], config["warmup_steps"], config["steps"])
        optimizer = make_optimizer(config, schedule)
        optimizer.build(model.trainable_variables)

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, _checkpoint_dir(model_dir, chief, distributed.task()),
                                         max_to_keep=3)
    # Every worker resumes from the chief's checkpoints, so all start at the same step.
    restored = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    if restored:
        checkpoint.restore(restored)
    start_step = int(optimizer.iterations.numpy())
    if chief:
        model_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(model_dir / "config.json", json.dumps(config, indent=1, sort_keys=True))
    if restored:
        log(f"resumed from {restored} at step {start_step}")
        if chief:
            _forget_records_after(model_dir / "metrics.jsonl", start_step)

    writer = tf.summary.create_file_writer(str(model_dir / "logs")) if chief else tf.summary.create_noop_writer()
    metrics_log = model_dir / "metrics.jsonl"

    before = {}
    if chief and evaluation_sets:
        if start_step == 0:
            before = evaluate_all(model, evaluation_sets, config, log)
            _append_jsonl(metrics_log, {"step": 0, "phase": "before", "evaluation": before})
            _summaries(writer, 0, before)
        else:
            before = _first_evaluation(metrics_log)

    if start_step < config["steps"]:
        dataset = distributed_training_dataset(
            strategy, pairs, config["batch_size"], seed=config["seed"], hard_negatives=config["hard_negatives"],
            unique_ids=config["unique_ids"], skip_batches=start_step,
        )
        step_fn = make_train_step(strategy, model, optimizer, config)
        iterator = iter(dataset)
        window_start, window_steps = time.perf_counter(), 0
        for step in range(start_step + 1, config["steps"] + 1):
            loss = float(step_fn(next(iterator)).numpy())
            window_steps += 1
            if not math.isfinite(loss):
                latest = manager.latest_checkpoint
                log(f"error: the loss became {loss} at step {step}; training stopped. The last good checkpoint "
                    f"is {latest or 'none (no checkpoint was written yet)'} and is kept. Try a lower "
                    f"--learning_rate or a higher --temperature.", error=True)
                return 3
            if step % config["log_every"] == 0 or step == config["steps"]:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step, "loss": loss,
                    "learning_rate": float(schedule(step - 1)),
                    "temperature": float(model.current_temperature()),
                    "steps_per_second": window_steps / elapsed,
                    "examples_per_second": window_steps * config["batch_size"] / elapsed,
                }
                log(f"step {step}/{config['steps']}  loss {loss:.4f}  lr {record['learning_rate']:.2e}  "
                    f"temperature {record['temperature']:.4f}  {record['steps_per_second']:.2f} steps/s  "
                    f"{record['examples_per_second']:.1f} examples/s")
                if chief:
                    _append_jsonl(metrics_log, record)
                with writer.as_default(step=step):
                    for key in ("loss", "learning_rate", "temperature", "steps_per_second", "examples_per_second"):
                        tf.summary.scalar(f"train/{key}", record[key])
                window_start, window_steps = time.perf_counter(), 0
            if step % config["checkpoint_every"] == 0 or step == config["steps"]:
                if not all_finite(model):
                    log(f"error: the weights became non-finite at step {step} (loss {loss}); training stopped "
                        f"without saving. The last good checkpoint is {manager.latest_checkpoint or 'none'} "
                        "and is kept. Try a lower --learning_rate.", error=True)
                    return 3
                manager.save(checkpoint_number=step)
            if chief and config["eval_every"] and step % config["eval_every"] == 0 and step < config["steps"]:
                during = evaluate_all(model, evaluation_sets, config, log)
                _append_jsonl(metrics_log, {"step": step, "phase": "during", "evaluation": during})
                _summaries(writer, step, during)
        writer.flush()
    else:
        log(f"already trained to step {start_step} of {config['steps']}")

    if not chief:
        shutil.rmtree(manager.directory, ignore_errors=True)
        return 0
    _save_model(model, model_dir / "model.keras")
    after = {}
    if evaluation_sets:
        after = evaluate_all(model, evaluation_sets, config, log)
        _append_jsonl(metrics_log, {"step": config["steps"], "phase": "after", "evaluation": after})
        _summaries(writer, config["steps"], after)
        writer.flush()
    if config["export"]:
        manifest = export(model, model_dir / "export", version=1, overwrite=True, training_config=config,
                          metrics=after or None, verbose=False)
        log(f"exported {', '.join(manifest['models'])} (version 1) to {model_dir / 'export'}")
    if evaluation_sets:
        print_comparison(before, after)
    return 0


def make_train_step(strategy, model, optimizer, config):
    """A tf.function running one optimisation step on every replica; returns the global mean loss."""
    global_batch = config["batch_size"]
    loss_options = dict(same_tower=config["same_tower"], bidirectional=config["bidirectional"])

    @tf.autograph.experimental.do_not_convert  # plain TensorFlow: no Python control flow on tensors
    def replica_step(batch):
        inputs = {"query": batch["query"], "document": batch["document"]}
        if "hard_negatives" in batch:
            inputs["hard_negatives"] = batch["hard_negatives"]
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            per_example = samtone_loss(
                outputs["query"], outputs["document"], outputs.get("hard_negatives"),
                temperature=model.current_temperature(), query_ids=batch["query_id"],
                document_ids=batch["document_id"], hard_negative_ids=batch.get("hard_negative_ids"),
                **loss_options,
            )
            # Summed over replicas, this is the mean over the GLOBAL batch.
            loss = tf.reduce_sum(per_example) / global_batch
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function
    def step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step


def all_finite(model):
    """Whether every weight of the model is finite (checked before each checkpoint)."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.weights if "float" in str(v.dtype))


def make_optimizer(config, schedule):
    if config["optimizer"] == "adafactor":
        return keras.optimizers.Adafactor(learning_rate=schedule)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config["weight_decay"])
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "layer_norm", "temperature"])
    return optimizer


@keras.saving.register_keras_serializable(package="samtone_tf")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear decay to 0 at `total_steps`.

    Its position is the optimizer's iteration count, so a resumed run continues it exactly.
    """

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        warmup = self.peak * step / max(self.warmup_steps, 1)
        remaining = max(self.total_steps - self.warmup_steps, 1)
        decay = self.peak * tf.maximum(0.0, (self.total_steps - step) / remaining)
        return tf.where(step <= self.warmup_steps, warmup, decay)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps)


def evaluate_all(model, evaluation_sets, config, log):
    results = {}
    for spec, data in evaluation_sets:
        log(f"evaluating on {spec}: {len(data.queries)} queries, {len(data.corpus)} documents")
        results[spec] = evaluate_encoder(model, data, batch_size=config["eval_batch_size"], verbose=False)
    return results


def print_comparison(before, after):
    print("\nretrieval on data not trained on" + (" (before -> after training)" if before else ""))
    width = max(len(EVALUATION_LABELS.get(name, name)) for name in after)
    for name, result in after.items():
        label = EVALUATION_LABELS.get(name, name)
        cells = []
        for measure in REPORTED:
            if name in before:
                cells.append(f"{measure} {before[name][measure]:.4f} -> {result[measure]:.4f}")
            else:
                cells.append(f"{measure} {result[measure]:.4f}")
        print(f"  {label:<{width}}  " + "   ".join(cells))
    sys.stdout.flush()


class _Printer:
    def __init__(self, chief):
        self.chief = chief

    def __call__(self, message, error=False):
        if error:
            print(message, file=sys.stderr, flush=True)
        elif self.chief:
            print(message, flush=True)


def _checkpoint_dir(model_dir, chief, task):
    if chief:
        return str(model_dir / "checkpoints")
    # Every worker must save (the save reads mirrored variables in step), but only the
    # chief's checkpoints are kept; the others write to a scratch directory.
    task_type, task_id = task
    return tempfile.mkdtemp(prefix=f"samtone-{task_type}{task_id}-checkpoints-")


def _save_model(model, path):
    staging = path.with_name(f".{path.name}.tmp.keras")
    model.save(staging)
    os.replace(staging, path)


def _append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _forget_records_after(path, step):
    """Drops the records a killed run wrote after its last checkpoint (`step`), which the resumed run writes
    again, so that metrics.jsonl holds each step once."""
    if not path.is_file():
        return
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in records if r["step"] <= step and r.get("phase") != "after"]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _first_evaluation(path):
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("phase") == "before":
            return record["evaluation"]
    return {}


def _summaries(writer, step, evaluation):
    with writer.as_default(step=step):
        for name, result in evaluation.items():
            for measure, value in result.items():
                if isinstance(value, float) and "@" in measure:
                    tf.summary.scalar(f"eval/{name}/{measure}", value)


if __name__ == "__main__":
    sys.exit(main())
