"""Forward+backward time of the loss alone: SamToNe variants against the standard loss.

    python benchmarks/loss_overhead.py [--batches 64 256 1024 4096] [--dim 384] [--repeats 20]

Every configuration is timed in the same run, interleaved round by round so that
machine noise hits them alike; the table reports the median time and its ratio to
same_tower="none" with the same `bidirectional` setting. Prints a Markdown table and
writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import tables  # noqa: E402,I001  (benchmarks/tables.py, beside this script)
from machine import cpu_flags, describe  # noqa: E402
from samtone_tf.atomic import atomic_write_text  # noqa: E402
from samtone_tf.losses import samtone_loss  # noqa: E402

CONFIGS = [
    ("none", False),
    ("query", False),
    ("none", True),
    ("query", True),
    ("document", True),
    ("both", True),
]


def make_step(same_tower, bidirectional, jit_compile):
    @tf.function(jit_compile=jit_compile)
    def step(query, document):
        with tf.GradientTape() as tape:
            tape.watch([query, document])
            loss = tf.reduce_mean(
                samtone_loss(query, document, same_tower=same_tower, bidirectional=bidirectional)
            )
        grads = tape.gradient(loss, [query, document])
        return loss, grads

    return step


def interleaved_medians(operations, repeats):
    """{name: median seconds} of `operations` ({name: a function that runs once and waits for its result}) over
    `repeats` rounds, each running every operation once, so that machine noise hits them alike (after 2 warm-up
    runs each, which trace)."""
    for run in operations.values():
        run(), run()
    times = {name: [] for name in operations}
    for _ in range(repeats):
        for name, run in operations.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def time_configs(batch, dim, repeats, jit_compile):
    query = tf.math.l2_normalize(tf.random.normal([batch, dim], seed=1), axis=-1)
    document = tf.math.l2_normalize(tf.random.normal([batch, dim], seed=2), axis=-1)
    steps = {config: make_step(*config, jit_compile) for config in CONFIGS}
    # grads[0].numpy() waits for the result.
    return interleaved_medians({config: lambda step=step: step(query, document)[1][0].numpy()
                                for config, step in steps.items()}, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--jit_compile", action="store_true", help="compile the step with XLA")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)

    rows = []
    for batch in args.batches:
        medians = time_configs(batch, args.dim, args.repeats, args.jit_compile)
        for (same_tower, bidirectional), seconds in medians.items():
            baseline = medians[("none", bidirectional)]
            rows.append(
                dict(batch=batch, same_tower=same_tower, bidirectional=bidirectional,
                     ms=1000 * seconds, ratio=seconds / baseline)
            )
        print(f"batch {batch} done", flush=True)

    print(f"\nloss forward+backward, D={args.dim}, median of {args.repeats}, "
          f"jit_compile={args.jit_compile}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}\n")
    results = dict(machine=f"{describe()}, TF {tf.__version__}", cpu_flags=cpu_flags(), dim=args.dim,
                   repeats=args.repeats, jit_compile=args.jit_compile, rows=rows)
    print(tables.loss_overhead(results))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
