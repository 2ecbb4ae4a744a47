"""Training on mixed lengths: a batch encoded in groups of similar length against the batch as padded.

    python benchmarks/length_groups.py --json docs/results/length_groups.json

The quality benchmark's training (benchmarks/quality.py: the full all-MiniLM-L6-v2, ADE, query length 64, document
length 256, its 32,000 training pairs: ReQA SQuAD sentences with WikiQA, SciFact abstracts and MS MARCO passages
among them) pads every document of a batch to its longest: one SciFact abstract in a batch of 64 pads 63 short
sentences to 256 tokens. `DualEncoder(length_groups=8)` (the default) encodes a tokenized batch in 8 groups of
rows of similar length, each cut to its own longest row; `length_groups=1` encodes the batch as padded. Both train
the same weights (tests/test_length_groups.py); this measures their step time on the same batches, in interleaved
rounds (median), and the token positions each computes per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import samtone_tf.options  # noqa: F401,I001  (first: it sets TensorFlow's environment before TensorFlow loads)
import numpy as np
import tensorflow as tf

from machine import cpu_flags, describe  # benchmarks/machine.py, beside this script
from quality import training_pairs  # benchmarks/quality.py: the data this measures on

from samtone_tf.atomic import atomic_write_text
from samtone_tf.data.pipeline import training_dataset
from samtone_tf.encoding import length_group_bounds
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.step import compile_for_training, make_train_step


def positions(batch, groups, min_rows=4):
    """Token positions the towers compute for `batch` (query and document sides) in `groups` length groups."""
    total = 0
    for side in ("query", "document"):
        lengths = np.sort(np.asarray(tf.reduce_sum(tf.cast(batch[f"{side}_padding_mask"], tf.int32), axis=1)))[::-1]
        bounds = length_group_bounds(len(lengths), groups, min_rows)
        total += sum((end - start) * int(lengths[start]) for start, end in zip(bounds[:-1], bounds[1:]))
    return total


def warm_up(step, batches, minimum):
    """Runs `step` on `batches` (every one padded to its own length) until, after `minimum` steps, a batch of a
    shape not seen before traces nothing new: the step's signature has generalised, so timed steps do not trace.
    -> the number of warm-up steps."""
    seen = set()
    for index, batch in enumerate(batches):
        shapes = tuple(tuple(tensor.shape) for tensor in tf.nest.flatten(batch))
        before = step.traced.experimental_get_tracing_count()
        step(batch)
        traced = step.traced.experimental_get_tracing_count() > before
        if index + 1 >= minimum and shapes not in seen and not traced:
            return index + 1
        seen.add(shapes)
    sys.exit(f"the step was still tracing after {len(batches)} warm-up steps")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2,
                        help="steps before timing, at least; more until a new batch shape traces nothing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps_per_round", type=int, default=3)
    parser.add_argument("--query_max_length", type=int, default=64)
    parser.add_argument("--document_max_length", type=int, default=256)
    args = parser.parse_args(argv)

    steps = args.warmup + args.rounds * args.steps_per_round
    pairs = training_pairs(32_000)
    config = TrainConfig(batch_size=args.batch_size, same_tower="query", optimizer="adamw", weight_decay=0.01,
                         learning_rate=3e-5, steps=500, temperature=0.05)
    settings = {"padded batch": 1, f"{args.groups} length groups": args.groups}
    runners, batches = {}, None
    for name, groups in settings.items():
        model = dual_encoder_from_checkpoint(architecture="ade", query_max_length=args.query_max_length,
                                             document_max_length=args.document_max_length, length_groups=groups)
        compile_for_training(model, config)
        runners[name] = make_train_step(tf.distribute.get_strategy(), model)
        if batches is None:  # the same tokenized batches for both
            dataset = training_dataset(pairs, args.batch_size, seed=0, tokenize=model.tokenize_inputs)
            batches = [batch for batch, _ in zip(dataset, range(steps))]
    warmed = {name: warm_up(step, batches, args.warmup) for name, step in runners.items()}
    traces = {name: step.traced.experimental_get_tracing_count() for name, step in runners.items()}
    times = {name: [] for name in runners}
    for round_index in range(args.rounds):
        start_batch = args.warmup + round_index * args.steps_per_round
        chunk = batches[start_batch : start_batch + args.steps_per_round]
        for name, step in runners.items():
            start = time.perf_counter()
            for batch in chunk:
                step(batch)
            times[name].append((time.perf_counter() - start) / len(chunk))
    measured = batches[args.warmup :]
    rows = [{"setting": name, "seconds_per_step": statistics.median(times[name]), "all_rounds": times[name],
             "warm_up_steps": warmed[name],
             "traces_while_timed": runners[name].traced.experimental_get_tracing_count() - traces[name],
             "positions_per_step": statistics.fmean(positions(b, groups) for b in measured)}
            for name, groups in settings.items()]
    results = {"machine": describe(), "cpu_flags": cpu_flags(), "batch_size": args.batch_size,
               "query_max_length": args.query_max_length, "document_max_length": args.document_max_length,
               "architecture": "ade", "rows": rows}
    for row in rows:
        print(f"{row['setting']}: {row['seconds_per_step']:.2f} s/step, {row['positions_per_step']:.0f} positions",
              flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
