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
from samtone_tf.cli import (HelpFormatter, add_verbose, fail, non_negative_float, non_negative_int, positive_float,
                            positive_int, quiet_native_logs)
from samtone_tf.run_dir import (RunLock, RunLockedError, check_resumable, checkpoint_candidates, read_jsonl_records,
                                restore_latest)
from samtone_tf.data.datasets import load_evaluation, load_training_pairs
from samtone_tf.data.pipeline import distributed_training_dataset, raise_input_error
from samtone_tf.models import build_model
from samtone_tf.serving import export
from samtone_tf.training import WarmupLinearDecay, all_finite, make_optimizer, make_train_step
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
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="reqa:squad",
                      help="training data: reqa:squad, beir:<name>, msmarco:<dir>, wikiqa, flagembedding:<file>")
    data.add_argument("--train_split", default="train", help="the split to train on")
    data.add_argument("--max_train_pairs", type=non_negative_int, default=None,
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
    model.add_argument("--num_layers", type=positive_int, default=None,
                       help="keep only the first N transformer layers of the checkpoint (default: all)")
    model.add_argument("--architecture", default="sde", choices=("sde", "ade", "ade_spl", "ade_ste", "ade_fte"),
                       help="sde: one tower; ade: two; ade_spl: shared projection; ade_ste: shared token "
                            "embeddings; ade_fte: frozen token embeddings")
    model.add_argument("--projection_dim", type=positive_int, default=None,
                       help="projection after pooling (ade_spl defaults it to the backbone width)")
    model.add_argument("--pooling", default=None, choices=("mean", "cls"), help="default: the checkpoint's")
    model.add_argument("--query_max_length", type=positive_int, default=32, help="query tokens kept")
    model.add_argument("--document_max_length", type=positive_int, default=64, help="document tokens kept")

    loss = parser.add_argument_group("loss")
    loss.add_argument("--same_tower", default="query", choices=("none", "query", "document", "both"),
                      help="SamToNe: which tower's other members join the negatives ('none': standard loss)")
    loss.add_argument("--bidirectional", action="store_true", help="add the document->query softmax")
    loss.add_argument("--temperature", type=positive_float, default=0.05, help="softmax temperature")
    loss.add_argument("--learnable_temperature", action="store_true",
                      help="learn the temperature (log scale, clipped to [0.01, 1.0]), starting at --temperature")
    loss.add_argument("--hard_negatives", type=non_negative_int, default=0, help="hard negatives per pair (from the data)")

    optimization = parser.add_argument_group("optimization")
    optimization.add_argument("--batch_size", type=positive_int, default=32,
                              help="GLOBAL batch size; each replica gets batch_size / replicas")
    optimization.add_argument("--steps", type=positive_int, default=50, help="training steps")
    optimization.add_argument("--optimizer", default="adamw", choices=("adamw", "adafactor"), help="the optimizer")
    optimization.add_argument("--learning_rate", type=positive_float, default=3e-5, help="peak learning rate")
    optimization.add_argument("--warmup_steps", type=non_negative_int, default=None, help="default: 10%% of --steps")
    optimization.add_argument("--weight_decay", type=non_negative_float, default=0.01, help="AdamW only")
    optimization.add_argument("--seed", type=non_negative_int, default=0,
                              help="fixes the data order and the initialisation of new weights")

    run = parser.add_argument_group("run")
    run.add_argument("--strategy", default="default", choices=("default", "mirrored", "multi_worker", "tpu"),
                     help="tf.distribute strategy")
    run.add_argument("--cpu_replicas", type=positive_int, default=None,
                     help="split the CPU into N logical devices (mirrored strategy without GPUs)")
    run.add_argument("--tpu", default=None, help="TPU name or address (strategy tpu)")
    run.add_argument("--model_dir", default="runs/default",
                     help="where the run writes; the same command on it again resumes")
    run.add_argument("--checkpoint_every", type=positive_int, default=10, help="save a checkpoint every N steps")
    run.add_argument("--eval_every", type=non_negative_int, default=0,
                     help="evaluate every N steps (0: before and after only)")
    run.add_argument("--log_every", type=positive_int, default=10, help="log every N steps")
    run.add_argument("--eval_batch_size", type=positive_int, default=128, help="texts per encoding batch")
    run.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                     help="write servable SavedModels to model_dir/export when training ends")
    add_verbose(run)
    return parser


def resolve_config(args):
    config = dict(vars(args))
    config.pop("verbose", None)
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
    args = build_parser().parse_args(argv)
    quiet_native_logs(args.verbose)
    config = resolve_config(args)
    try:
        return train(config)
    except (ValueError, OSError, RunLockedError) as error:
        return fail(error)
    except KeyboardInterrupt:
        return fail("interrupted; run the same command again to resume from the last checkpoint", 130)


def train(config):
    """Runs (or resumes) the training run `config` describes. -> exit code."""
    # First: splitting the CPU into replicas must precede any use of a device.
    strategy = distributed.make_strategy(config["strategy"], config["cpu_replicas"], config["tpu"])
    replicas = strategy.num_replicas_in_sync
    if config["batch_size"] % replicas:
        raise ValueError(f"--batch_size {config['batch_size']} is not divisible by {replicas} replicas")
    chief = distributed.is_chief(strategy)
    model_dir = Path(config["model_dir"])
    log = _Printer(chief)
    if not chief:
        return _train(config, strategy, chief, model_dir, log)
    # One run per model_dir: a second one would interleave its logs and checkpoints with ours.
    with RunLock(model_dir, say=log):
        return _train(config, strategy, chief, model_dir, log)


def _train(config, strategy, chief, model_dir, log):
    replicas = strategy.num_replicas_in_sync
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
    if checkpoint_candidates(model_dir / "checkpoints"):
        check_resumable(model_dir, config)
    restored = restore_latest(checkpoint, model_dir / "checkpoints", say=lambda m: log(m, error=True))
    start_step = int(optimizer.iterations.numpy())
    if chief:
        model_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(model_dir / "config.json", json.dumps(config, indent=1, sort_keys=True))
        _forget_records_after(model_dir / "metrics.jsonl", start_step, say=lambda m: log(m, error=True))
    if restored:
        log(f"resumed from {restored} at step {start_step}")

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
        progress = _Progress(start_step, config["steps"], enabled=chief and sys.stdout.isatty())
        step = start_step
        try:
            for step in range(start_step + 1, config["steps"] + 1):
                try:
                    loss = float(step_fn(next(iterator)).numpy())
                except tf.errors.InvalidArgumentError as error:
                    raise_input_error(error)  # a bad line of a streamed file: its own file:line error
                    raise
                window_steps += 1
                progress.update(step, loss)
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
                    progress.clear()
                    log(f"step {step}/{config['steps']}  loss {loss:.4f}  lr {record['learning_rate']:.2e}  "
                        f"temperature {record['temperature']:.4f}  {record['steps_per_second']:.2f} steps/s  "
                        f"{record['examples_per_second']:.1f} examples/s  ETA {progress.eta(step)}")
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
        except KeyboardInterrupt:
            progress.clear()
            writer.flush()
            latest = manager.latest_checkpoint
            where = (f"the last checkpoint is {latest}" if latest else "no checkpoint was written yet")
            log(f"interrupted at step {step} of {config['steps']}; {where}. Run the same command again to "
                "resume from it.", error=True)
            return 130
        progress.clear()
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


def _forget_records_after(path, step, say=print):
    """Drops the records a killed run wrote after its last checkpoint (`step`; all of them when it
    wrote none), which this run writes again, so that metrics.jsonl holds each step once. A torn
    last line is repaired."""
    if not path.is_file():
        return
    records = read_jsonl_records(path, say)
    kept = [r for r in records if step > 0 and r.get("step", 0) <= step and r.get("phase") != "after"]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _first_evaluation(path):
    for record in read_jsonl_records(path):
        if record.get("phase") == "before":
            return record["evaluation"]
    return {}


class _Progress:
    """A one-line progress bar with an ETA, redrawn in place on a terminal."""

    def __init__(self, start_step, total_steps, enabled):
        self.start_step, self.total_steps, self.enabled = start_step, total_steps, enabled
        self.started = time.perf_counter()
        self.shown = False

    def eta(self, step):
        done = step - self.start_step
        if done <= 0:
            return "?"
        seconds = (time.perf_counter() - self.started) / done * (self.total_steps - step)
        minutes, seconds = divmod(int(round(seconds)), 60)
        return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{seconds:02d}s"

    def update(self, step, loss):
        if not self.enabled:
            return
        width = 30
        filled = int(width * step / self.total_steps)
        sys.stdout.write(f"\r[{'=' * filled}{' ' * (width - filled)}] step {step}/{self.total_steps}  "
                         f"loss {loss:.4f}  ETA {self.eta(step)}   ")
        sys.stdout.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
            self.shown = False


def _summaries(writer, step, evaluation):
    with writer.as_default(step=step):
        for name, result in evaluation.items():
            for measure, value in result.items():
                if isinstance(value, float) and "@" in measure:
                    tf.summary.scalar(f"eval/{name}/{measure}", value)


if __name__ == "__main__":
    sys.exit(main())
