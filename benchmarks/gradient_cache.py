"""Gradient caching against the uncached step: peak memory and step time at growing global batches.

    python benchmarks/gradient_cache.py --json docs/results/gradient_cache.json [--batches 64 256 1024 4096]
    python benchmarks/gradient_cache.py --json docs/results/gradient_cache.json --batches 4096 --steps 1

Each measurement runs in a fresh process (so its peak resident memory is its own): all-MiniLM-L6-v2 (SDE),
query and document length 64, query-side SamToNe, AdamW; 2 warm-up steps, then the median of `--steps` timed
steps. Uncached at each batch while it fits in `--memory_limit_gb`; cached with chunks of `--chunk` rows
(one chunk's uncached step is the memory reference). Rows of an earlier run into the same --json (same
CPU, same chunk) are kept unless measured again. Needs the machine to itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from machine import cpu_flags, describe, measured_row  # benchmarks/machine.py, beside this script

from samtone_tf.atomic import atomic_write_text

REPOSITORY = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, resource, statistics, sys, time
import samtone_tf
import numpy as np
import tensorflow as tf
from samtone_tf.data.datasets import load_training_pairs
from samtone_tf.data.pipeline import training_dataset
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.step import compile_for_training, make_train_step
batch, chunk, steps = int(sys.argv[1]), int(sys.argv[2]) or None, int(sys.argv[3])
model = dual_encoder_from_checkpoint(architecture="sde", query_max_length=64, document_max_length=64)
config = TrainConfig(batch_size=batch, steps=1000, learning_rate=2e-5)
compile_for_training(model, config)
pairs = load_training_pairs("reqa:squad", max_pairs=batch * (steps + 2))
dataset = training_dataset(pairs, batch, seed=0, tokenize=model.tokenize_inputs)
step = make_train_step(tf.distribute.get_strategy(), model, gradient_cache_chunk=chunk)
times = []
for i, b in zip(range(steps + 2), dataset):
    start = time.perf_counter()
    step(b)
    if i >= 2:
        times.append(time.perf_counter() - start)
print(json.dumps({"seconds": statistics.median(times),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def measure(batch, chunk, steps, limit_gb):
    """One configuration in a fresh process. -> {"fits": True, "seconds", "peak_rss_gb"} or {"fits": False, ...}."""
    command = [sys.executable, "-c", WORKER, str(batch), str(chunk or 0), str(steps)]
    return measured_row(command, limit_gb, cwd=REPOSITORY)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="docs/results/gradient_cache.json")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--memory_limit_gb", type=float, default=22.0)
    args = parser.parse_args(argv)
    path = Path(args.json)
    # Rows of an earlier run on this CPU with this chunk are kept (a batch measured again replaces its row), so
    # the largest batches can be run apart with fewer steps.
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    keep = earlier.get("cpu_flags") == cpu_flags() and earlier.get("chunk") == args.chunk
    results = {"machine": describe(), "cpu_flags": cpu_flags(), "chunk": args.chunk,
               "memory_limit_gb": args.memory_limit_gb,
               "rows": [r for r in earlier.get("rows", []) if r["batch"] not in args.batches] if keep else []}
    results["one_chunk_uncached"] = measure(args.chunk, None, args.steps, args.memory_limit_gb)
    print(json.dumps({"one_chunk_uncached": results["one_chunk_uncached"]}), flush=True)
    uncached_fits = True
    for batch in args.batches:
        # Past the first batch the uncached step could not fit, larger ones cannot either.
        uncached = (measure(batch, None, args.steps, args.memory_limit_gb) if uncached_fits
                    else {"fits": False, "error": "a smaller batch already did not fit"})
        uncached_fits = uncached["fits"]
        row = {"batch": batch, "steps": args.steps, "uncached": uncached,
               "cached": measure(batch, args.chunk, args.steps, args.memory_limit_gb)}
        results["rows"] = sorted(results["rows"] + [row], key=lambda r: r["batch"])
        print(json.dumps(row), flush=True)
        atomic_write_text(args.json, json.dumps(results, indent=1))  # after every row: the run can be cut
    return 0


if __name__ == "__main__":
    sys.exit(main())
