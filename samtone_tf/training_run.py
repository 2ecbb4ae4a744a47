"""A training run in a model_dir: strategy, data, model, checkpoints (resume after a crash), TensorBoard
logs, metrics.jsonl, evaluation before, during and after training, model.keras and the export.
`python -m samtone_tf.train` parses its options into a `TrainConfig` and calls `run_training`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import keras
import tensorflow as tf

from samtone_tf.atomic import atomic_write_text
from samtone_tf.data.datasets import load_evaluation, load_training_pairs
from samtone_tf.data.pipeline import (SHUFFLE_BUFFER, distributed_training_dataset, per_replica_element_spec,
                                      raise_input_error)
from samtone_tf.encoding import EncodingStopped, LENGTH_BUCKET, stop_encoding_when
from samtone_tf.model.builder import build_model
from samtone_tf.ownership import claim
from samtone_tf.retrieval import evaluate_encoder
from samtone_tf.serving import export
from samtone_tf.training import distributed
from samtone_tf.training.run_dir import (RunLock, check_resumable, checkpoint_candidates, read_jsonl_records,
                                         restore_latest)
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.step import all_finite, compile_for_training, make_train_step, precision_policy

DEFAULT_EVALUATION = ("reqa:squad2-dev-sample/dev-v2.0-sample.json", "wikiqa")
EVALUATION_LABELS = {
    "reqa:squad2-dev-sample/dev-v2.0-sample.json": "SQuAD held-out articles (5, ReQA)",
    "wikiqa": "WikiQA test",
}
REPORTED = ("P@1", "MRR@10")


def negatives_per_query(config):
    batch = config.batch_size
    documents = batch - 1
    queries = batch - 1 if config.same_tower in ("query", "both") else 0
    hard = batch * config.hard_negatives
    return documents, queries, hard


def run_training(config):
    """Runs (or resumes) the training run `config` describes. -> exit code."""
    # First: splitting the CPU into replicas must precede any use of a device.
    strategy = distributed.make_strategy(config.strategy, config.cpu_replicas, config.tpu)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"--batch_size {config.batch_size} is not divisible by {replicas} replicas")
    chief = distributed.is_chief(strategy)
    model_dir = Path(config.model_dir)
    log = _Printer(chief)
    if not chief:
        # Every worker must save (the save reads mirrored variables in step), but only the chief's checkpoints
        # are kept; the others write to a scratch directory, removed however the run ends (a stop signal too).
        task_type, task_id = distributed.task()
        scratch = tempfile.mkdtemp(prefix=f"samtone-{task_type}{task_id}-checkpoints-")
        try:
            return _train(config, strategy, chief, model_dir, log, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    # Only into a new or empty directory, or a model_dir of ours: a run writes and replaces files there.
    claim(model_dir, "model_dir", recognise=_run_of_an_earlier_version)
    # One run per model_dir: a second one would interleave its logs and checkpoints with ours.
    with RunLock(model_dir, say=log):
        return _train(config, strategy, chief, model_dir, log, str(model_dir / "checkpoints"))


def _run_of_an_earlier_version(model_dir):
    """A model_dir written before ownership markers: it holds a run's configuration or checkpoints."""
    return (Path(model_dir) / "config.json").is_file() or (Path(model_dir) / "checkpoints").is_dir()


def describe_training_data(config, pairs):
    """The log line saying which pairs train, in what order, and how many epochs the run makes of them."""
    if config.first_train_pairs is not None:
        chosen = f"the first {config.first_train_pairs} in file order (--first_train_pairs)"
    elif config.max_train_pairs is not None:
        chosen = (f"a sample of {config.max_train_pairs} drawn from the whole file (--max_train_pairs, seed "
                  f"{config.seed})")
    else:
        chosen = "every pair of the file"
    if hasattr(pairs, "__len__"):
        epochs = config.steps * config.batch_size / max(len(pairs), 1)
        return (f"training data {config.dataset} ({config.train_split}): {len(pairs)} pairs, {chosen}; shuffled "
                f"each epoch (seed {config.seed}); {config.steps} steps x {config.batch_size} = {epochs:.2f} epochs")
    return (f"training data {config.dataset} ({config.train_split}): streamed, {chosen}; shuffled through a "
            f"buffer of {SHUFFLE_BUFFER} pairs each pass (seed {config.seed}), cycled for {config.steps} steps")


@dataclasses.dataclass
class _Run:
    """What the parts of a run share: set up by `_set_up`, then trained by `_loop` and finished by `_finish`."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    chief: bool
    model_dir: Path
    log: _Printer
    pairs: object
    evaluation_sets: list
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    manager: tf.train.CheckpointManager
    writer: object
    start_step: int
    before: dict

    @property
    def metrics_log(self):
        return self.model_dir / "metrics.jsonl"


def _train(config, strategy, chief, model_dir, log, checkpoint_dir):
    run = _set_up(config, strategy, chief, model_dir, log, checkpoint_dir)
    if run.start_step < config.steps:
        code = _loop(run)
        if code is not None:
            return code
    else:
        log(f"already trained to step {run.start_step} of {config.steps}")
    return _finish(run) if chief else 0


def _set_up(config, strategy, chief, model_dir, log, checkpoint_dir):
    """Seeds, data, the model and its optimizer, the checkpoint restored (a resume), the evaluation before
    training. -> the _Run."""
    replicas = strategy.num_replicas_in_sync
    keras.utils.set_random_seed(config.seed)
    documents, queries, hard = negatives_per_query(config)
    log(f"strategy {config.strategy}: {replicas} replica(s); global batch {config.batch_size} = "
        f"{replicas} x {config.batch_size // replicas}; each query sees {documents + queries + hard} negatives "
        f"({documents} documents + {queries} other queries + {hard} hard negatives)")
    if config.gradient_cache_chunk:
        log(f"gradient caching: each replica encodes its {config.batch_size // replicas} rows "
            f"{config.gradient_cache_chunk} at a time")
    pairs = load_training_pairs(config.dataset, config.train_split, config.data_dir,
                                max_pairs=config.first_train_pairs, sample=config.max_train_pairs, seed=config.seed)
    log(describe_training_data(config, pairs))
    evaluation_sets = []
    if chief:
        for spec in config.eval_datasets:
            name, _, split = spec.partition("@")
            evaluation_sets.append((spec, load_evaluation(name, split or None, config.data_dir)))

    warning = precision_policy(config.mixed_precision)
    if warning:
        log(f"warning: {warning}", error=True)
    try:
        with strategy.scope():
            model = build_model(config)
            optimizer = compile_for_training(model, config)
    finally:
        precision_policy("none")  # the model keeps its layers' policies; nothing built later inherits it

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=3)
    # Every worker resumes from the chief's checkpoints, so all start at the same step.
    if checkpoint_candidates(model_dir / "checkpoints"):
        check_resumable(model_dir, config)
    restored = restore_latest(checkpoint, model_dir / "checkpoints", say=lambda m: log(m, error=True))
    start_step = int(optimizer.iterations.numpy())
    if chief:
        model_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(model_dir / "config.json", config.to_json())
        _forget_records_after(model_dir / "metrics.jsonl", start_step, say=lambda m: log(m, error=True))
    if restored:
        log(f"resumed from {restored} at step {start_step}")
    writer = tf.summary.create_file_writer(str(model_dir / "logs")) if chief else tf.summary.create_noop_writer()
    run = _Run(config, strategy, chief, model_dir, log, pairs, evaluation_sets, model, optimizer, manager, writer,
               start_step, before={})
    if chief and evaluation_sets:
        if start_step == 0:
            run.before = evaluate_all(model, evaluation_sets, config, log)
            _append_jsonl(run.metrics_log, {"step": 0, "phase": "before", "evaluation": run.before})
            _summaries(writer, 0, run.before)
        else:
            run.before = _first_evaluation(run.metrics_log)
    return run


def _loop(run):
    """The steps from the run's start to config.steps: checkpoints, logs and evaluations on their schedules; a stop
    signal or a non-finite loss ends it early. -> an exit code when it ended early, else None."""
    config, strategy, model, log = run.config, run.strategy, run.model, run.log
    # Tokenised on the host by the input pipeline: the replica step sees integer tensors only.
    dataset = distributed_training_dataset(
        strategy, run.pairs, config.batch_size, seed=config.seed, hard_negatives=config.hard_negatives,
        unique_ids=config.unique_ids, skip_batches=run.start_step,
        tokenize=lambda texts: model.tokenize_inputs(texts, LENGTH_BUCKET if config.jit_compile else 1),
    )
    step_fn = make_train_step(strategy, model, config.gradient_cache_chunk, config.jit_compile,
                              element_spec=per_replica_element_spec(dataset, strategy, config.batch_size))
    iterator = iter(dataset)
    window = _Window()
    progress = _Progress(run.start_step, config.steps, enabled=run.chief and sys.stdout.isatty())
    multi_worker = distributed.is_multi_worker(strategy)
    # A signal is only noted (see _StopSignals) and acted on between steps. Workers stopping at different
    # steps would wait on each other's collectives: in a multi-worker job, after every step the workers agree
    # (one all-reduce) whether any was signalled; then all save the same step and stop together.
    stop = _StopSignals(signal.SIGINT, signal.SIGTERM)
    any_worker_stopping = distributed.any_worker_flag(strategy) if multi_worker else None
    try:
        for step in range(run.start_step + 1, config.steps + 1):
            if stop.received and not multi_worker:
                raise KeyboardInterrupt
            try:
                loss = step_fn(next(iterator))
            except tf.errors.InvalidArgumentError as error:
                raise_input_error(error)  # a bad line of a streamed file: its own file:line error
                raise
            window.steps += 1
            progress.update(step, loss)
            if not math.isfinite(loss):
                log(f"error: the loss became {loss} at step {step}; training stopped. The last good checkpoint "
                    f"is {run.manager.latest_checkpoint or 'none (no checkpoint was written yet)'} and is kept. "
                    "Try a lower --learning_rate or a higher --temperature.", error=True)
                return 3
            if step % config.log_every == 0 or step == config.steps:
                progress.clear()
                _log_step(run, step, loss, window, progress)
            if step % config.checkpoint_every == 0 or step == config.steps:
                if not all_finite(model):
                    log(f"error: the weights became non-finite at step {step} (loss {loss}); training stopped "
                        f"without saving. The last good checkpoint is {run.manager.latest_checkpoint or 'none'} "
                        "and is kept. Try a lower --learning_rate.", error=True)
                    return 3
                run.manager.save(checkpoint_number=step)
            # A run told to stop does not start (or go on with) an evaluation: it could take minutes, and a
            # scheduler kills at the end of its grace period.
            if (run.chief and config.eval_every and step % config.eval_every == 0 and step < config.steps
                    and not stop.received):
                during = evaluate_all(model, run.evaluation_sets, config, log,
                                      stopping=lambda: stop.received is not None)
                if during is not None:
                    _append_jsonl(run.metrics_log, {"step": step, "phase": "during", "evaluation": during})
                    _summaries(run.writer, step, during)
            if any_worker_stopping and step < config.steps and any_worker_stopping(stop.received is not None):
                raise _WorkersStopping
        if stop.received:  # during the last step, which is saved: stop before the final evaluation and export
            raise KeyboardInterrupt
    except (KeyboardInterrupt, _WorkersStopping) as stopped:
        progress.clear()
        run.writer.flush()
        return _stopped(run, stopped, stop.received, multi_worker)
    finally:
        stop.restore()
    progress.clear()
    run.writer.flush()
    if config.jit_compile:
        log(f"XLA compilations of {step_fn.compiled}: {step_fn.compilations()} (one per distinct batch shape)")
    return None


class _Window:
    """The steps since the last logged one, and when they started: what steps/s is measured over."""

    def __init__(self):
        self.started, self.steps = time.perf_counter(), 0


def _log_step(run, step, loss, window, progress):
    """One log line, one metrics.jsonl record and the TensorBoard scalars of `step`; the window starts again."""
    config = run.config
    elapsed = time.perf_counter() - window.started
    record = {
        "step": step, "loss": loss,
        "learning_rate": float(config.schedule(step - 1)),
        "temperature": float(run.model.current_temperature()),
        "steps_per_second": window.steps / elapsed,
        "examples_per_second": window.steps * config.batch_size / elapsed,
    }
    run.log(f"step {step}/{config.steps}  loss {loss:.4f}  lr {record['learning_rate']:.2e}  "
            f"temperature {record['temperature']:.4f}  {record['steps_per_second']:.2f} steps/s  "
            f"{record['examples_per_second']:.1f} examples/s  ETA {progress.eta(step)}")
    if run.chief:
        _append_jsonl(run.metrics_log, record)
    with run.writer.as_default(step=step):
        for key in ("loss", "learning_rate", "temperature", "steps_per_second", "examples_per_second"):
            tf.summary.scalar(f"train/{key}", record[key])
    window.started, window.steps = time.perf_counter(), 0


def _stopped(run, stopped, received, multi_worker):
    """A run stopped by a signal (`received`, or a peer's: `stopped` is _WorkersStopping): saves the steps done
    when it can and says where to resume. -> the exit code, 128 + the signal's number."""
    agreed = isinstance(stopped, _WorkersStopping)
    signum = received or (signal.SIGTERM if agreed else signal.SIGINT)
    done = int(run.optimizer.iterations.numpy())
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    if agreed and not received:
        how = "stopped with another worker, which was signalled,"
    # A multi-worker save is collective: only when every worker agreed to stop here.
    run.log(f"{how} after step {done} of {run.config.steps}; "
            f"{_save_on_stop(run.manager, run.model, done, can_save=agreed or not multi_worker)}", error=True)
    return 128 + signum


def _finish(run):
    """The chief's end of a run: model.keras, the evaluation after training, the export. -> 0."""
    config, log = run.config, run.log
    _save_model(run.model, run.model_dir / "model.keras")
    after = {}
    if run.evaluation_sets:
        after = evaluate_all(run.model, run.evaluation_sets, config, log)
        _append_jsonl(run.metrics_log, {"step": config.steps, "phase": "after", "evaluation": after})
        _summaries(run.writer, config.steps, after)
        run.writer.flush()
    if config.export:
        manifest = export(run.model, run.model_dir / "export", version=1, overwrite=True,
                          training_config=config.to_dict(), metrics=after or None, verbose=False)
        log(f"exported {', '.join(manifest['models'])} (version 1) to {run.model_dir / 'export'}")
    if run.evaluation_sets:
        print_comparison(run.before, after)
    return 0


class _WorkersStopping(Exception):
    """The workers of a multi-worker job agreed to stop after this step (one of them was signalled)."""


class _StopSignals:
    """Notes the first of `signals`, of SIGINT (Ctrl-C) and SIGTERM (what a scheduler or `kill` sends before it kills:
    Kubernetes, Slurm, preemptible VMs), in `received`, for the training loop to stop on between steps (all workers
    of a multi-worker job at the same step), and says so on stderr; a second signal raises KeyboardInterrupt at once
    (a step or an evaluation that takes too long, a worker stuck waiting on a lost peer).
    Why the first one raises nothing: Python raises a handler's exception at whatever bytecode runs next. Inside a
    garbage-collection callback (a weakref's, as TensorFlow and Keras hold many) it is printed as "ignored" and lost;
    inside code a native library runs through `PyRun_*`, CPython 3.11 remembers it as unhandled even when the loop
    catches it, and the process, its stop saved, then exits killed by SIGINT instead of with its own code.
    A signal is taken over only from its default handling, in the main thread: a process started with it ignored,
    or an application with its own handler, keeps its choice."""

    DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def __init__(self, *signals):
        self.received = None  # the number of the first signal received
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in signals:
            if signal.getsignal(signum) is self.DEFAULTS[signum]:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        # os.write, not print: a handler that runs inside a print to the same stream would fail on re-entry.
        os.write(2, f"{signal.Signals(signum).name} received: stopping after this step, which is then saved "
                    "(send it again to stop at once)\n".encode())

    def restore(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def _save_on_stop(manager, model, done, can_save):
    """Saves the steps a stopped run completed since its last checkpoint, so that resuming loses none (unless not
    `can_save`: a multi-worker save is collective, and the other workers may not be stopping).
    -> where the run can resume from, as a sentence for the log."""
    latest = manager.latest_checkpoint
    resume = "Run the same command again to resume"
    from_latest = (f"the last checkpoint is {latest}. {resume} from it." if latest else
                   f"no checkpoint was written yet. {resume}: it starts over.")
    if latest and latest.endswith(f"-{done}"):  # stopped right after a periodic save: the steps done are in it
        return f"saved {latest}. {resume} from it."
    if not can_save or done == 0:
        return from_latest
    if not all_finite(model):
        return (f"the weights are non-finite, so they were not saved; the last checkpoint is {latest or 'none'}. "
                "Try a lower --learning_rate.")
    try:
        saved = manager.save(checkpoint_number=done)
    except KeyboardInterrupt:  # a second Ctrl-C while saving: stop now (resuming skips a damaged save)
        return f"saving was interrupted; {from_latest}"
    return f"saved {saved}. {resume} from it."


def evaluate_all(model, evaluation_sets, config, log, stopping=None):
    """{spec: metrics} of `model` on every (spec, data) of `evaluation_sets`; None if `stopping()` turned true
    before the last set ended (the set being encoded stops within one batch; the sets left are skipped)."""
    results = {}
    for spec, data in evaluation_sets:
        if stopping and stopping():
            log(f"evaluation at this step skipped from {spec} on: the run is stopping", error=True)
            return None
        log(f"evaluating on {spec}: {len(data.queries)} queries, {len(data.corpus)} documents")
        try:
            with stop_encoding_when(stopping or (lambda: False)):
                results[spec] = evaluate_encoder(model, data, batch_size=config.eval_batch_size, verbose=False)
        except EncodingStopped as stopped:
            log(f"evaluation at this step stopped in {spec} ({stopped}) and skipped from there on: the run is "
                "stopping", error=True)
            return None
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


