"""Cheaper embeddings, how much they lose: SamToNe against SamToNe + Matryoshka, at every prefix and code precision.

    python benchmarks/matryoshka.py                     # the grid; resumes where it stopped
    python benchmarks/matryoshka.py --report            # the RESULTS tables, from the results file

With identical data, initialisation, steps, batch size and seeds (benchmarks/quality.py's training data and
training loop), fine-tunes all-MiniLM-L6-v2 (its first `--num_layers` layers) as an SDE with query-side SamToNe,
once plain ("plain") and once with the loss also at the prefixes `--matryoshka_dims` ("matryoshka": `train
--matryoshka_dims`, equal weights, the full dimension included), seeds 0, 1, 2. Every model is then scored on the
quality benchmark's evaluation sets at every prefix of `--dims` (the full dimension first) and every code of
`index.quantized.QuantizedIndex`: float32, int8, binary, and binary with its best `--rescore` candidates rescored
at float32 (the shortlist of `evaluate --precision binary --rescore K`). The plain model's prefixes are post-hoc
truncation. Queries and documents are encoded once per set at full dimension; each cell is the same exact search
`evaluate --dims D --precision P [--rescore K]` runs. Results (every set's nDCG@10 and P@1 per cell) are written
after every run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import samtone_tf.options  # noqa: F401,I001  (first: it sets TensorFlow's environment before TensorFlow loads)
import keras
import tensorflow as tf
from machine import cpu_flags, vector_class  # benchmarks/machine.py, beside this script
from quality import EVALUATION_SETS, train_one, training_pairs  # benchmarks/quality.py, beside this script

from samtone_tf import metrics
from samtone_tf.atomic import atomic_write_text
from samtone_tf.data.datasets import load_evaluation
from samtone_tf.index.quantized import QuantizedIndex

MODELS = ("plain", "matryoshka")
CODES = (("float32", None), ("int8", None), ("binary", None), ("binary", "rescore"))  # (precision, rescoring)
MEASURES = ("nDCG@10", "P@1")


def cell_key(dims, precision, rescore):
    return f"{dims}|{precision}" + (f"+rescore{rescore}" if rescore else "")


def score_grid(model, evaluation_sets, dims_list, rescore, batch_size):
    """{cell key: {set label: {measure: value}}} of `model` at every prefix and code, and the seconds spent."""
    grid = {}
    for label, data in evaluation_sets:
        query_ids, doc_ids = list(data.queries), list(data.corpus)
        queries = model.encode_queries([data.queries[q] for q in query_ids], batch_size=batch_size, verbose=False)
        documents = model.encode_documents([data.document_text(d) for d in doc_ids], batch_size=batch_size,
                                           verbose=False)
        for dims in dims_list:
            for precision, rescoring in CODES:
                depth = rescore if rescoring else None
                index = QuantizedIndex(documents, doc_ids, dims=dims, precision=precision, rescore=depth)
                found_ids, found_scores = index.search(queries, 100)
                run = {q: dict(zip(ids, map(float, scores))) for q, ids, scores in zip(query_ids, found_ids,
                                                                                       found_scores)}
                table = metrics.per_query(run, data.qrels, MEASURES)
                grid.setdefault(cell_key(dims, precision, depth), {})[label] = {
                    m: round(statistics.fmean(values[m] for values in table.values()), 6) for m in MEASURES}
    return grid


def average(grid_cell, measure="nDCG@10"):
    """The mean of `measure` over the sets of one cell."""
    return statistics.fmean(result[measure] for result in grid_cell.values())


def report(store):
    """The Markdown tables and the goals' verdicts of a results store."""
    runs = {key: run for key, run in store.items() if key.count("|") == 1}
    settings = store.get("settings", {})
    full, rescore = settings.get("dims", [384])[0], settings.get("rescore", 100)
    seeds = sorted({int(key.split("|")[1]) for key in runs})
    by_model = {name: [runs[k] for k in sorted(runs) if k.startswith(f"{name}|")] for name in MODELS}
    cells = list(next(iter(runs.values()))["grid"]) if runs else []
    lines = ["| dims | code | bytes/doc | " + " | ".join(f"{name} nDCG@10" for name in MODELS)
             + " | " + " | ".join(f"{name} % of its {full} float32" for name in MODELS) + " | "
             + " | ".join(f"{name} P@1" for name in MODELS) + " |",
             "|---:|---|---:|" + "---:|" * (3 * len(MODELS))]

    def values(name, cell, measure="nDCG@10"):
        return [average(run["grid"][cell], measure) for run in by_model[name]]

    def kept(name, cell):
        return [average(run["grid"][cell]) / average(run["grid"][f"{full}|float32"]) for run in by_model[name]]

    for cell in cells:
        dims, code = cell.split("|")
        size = {"float32": 4 * int(dims), "int8": int(dims), "binary": -(-int(dims) // 8)}[code.split("+")[0]]
        if "rescore" in code:
            size = f"{size} (+{4 * int(dims)} on disk)"
        present = [name for name in MODELS if by_model[name]]
        lines.append(f"| {dims} | {code} | {size} | "
                     + " | ".join(_mean_std(values(n, cell)) if n in present else "–" for n in MODELS) + " | "
                     + " | ".join(_mean_std([100 * v for v in kept(n, cell)], 1) if n in present else "–"
                                  for n in MODELS) + " | "
                     + " | ".join(_mean_std(values(n, cell, "P@1")) if n in present else "–" for n in MODELS)
                     + " |")
    text = "\n".join(lines) + (f"\n\nnDCG@10 and P@1: the mean over the {len(store.get('sets', []))} sets, then "
                               f"mean ± standard deviation over seeds {', '.join(map(str, seeds))}; "
                               "% of its float32: the cell over the same model's full-dimension float32, per seed.\n")
    if all(by_model.values()):
        text += "\n" + "\n".join(verdicts(by_model, full, rescore, kept, values)) + "\n"
    text += "\n" + runs_table(runs)
    return text


def verdicts(by_model, full, rescore, kept, values):
    """The issue's goals, each with its numbers."""
    lines = []
    at128 = "128|float32"
    if at128 in by_model["matryoshka"][0]["grid"]:
        share = statistics.fmean(kept("matryoshka", at128))
        lines.append(f"- Matryoshka at 128 dims keeps {100 * share:.1f}% of its {full}-dim nDCG@10 (goal ≥ 97%): "
                     f"{'met' if share >= 0.97 else 'not met'}.")
        ours, truncated = statistics.fmean(values("matryoshka", at128)), statistics.fmean(values("plain", at128))
        lines.append(f"- At 128 dims, Matryoshka {ours:.4f} against post-hoc truncation of the plain model "
                     f"{truncated:.4f} ({ours - truncated:+.4f}): {'beats it' if ours > truncated else 'does not'}.")
    plain, ours = values("plain", f"{full}|float32"), values("matryoshka", f"{full}|float32")
    spread = max(statistics.stdev(plain), statistics.stdev(ours)) if len(plain) > 1 and len(ours) > 1 else 0.0
    gap = statistics.fmean(ours) - statistics.fmean(plain)
    lines.append(f"- At {full} dims, Matryoshka − plain = {gap:+.4f} (largest standard deviation {spread:.4f}): "
                 f"{'within one standard deviation' if abs(gap) <= spread or gap >= 0 else 'beyond it, worse'}.")
    for name in MODELS:
        int8 = statistics.fmean(kept(name, f"{full}|int8"))
        binary = statistics.fmean(kept(name, f"{full}|binary+rescore{rescore}"))
        lines.append(f"- {name}: int8 keeps {100 * int8:.2f}% of float32 nDCG@10 with 4× less memory (goal ≥ 99.5%: "
                     f"{'met' if int8 >= 0.995 else 'not met'}); binary + rescoring {rescore} keeps "
                     f"{100 * binary:.2f}% with 32× less (goal ≥ 97%: {'met' if binary >= 0.97 else 'not met'}).")
    return lines


def runs_table(runs):
    lines = ["| run | model | seed | CPU | train s | eval s | training loss first → last |",
             "|---:|---|---:|---|---:|---:|---|"]
    for number, (key, run) in enumerate(runs.items(), 1):
        name, seed = key.split("|")
        lines.append(f"| {number} | {name} | {seed} | {vector_class(run['cpu_flags'])} | {run['train_seconds']:.0f} | "
                     f"{run['eval_seconds']:.0f} | {run['first_loss']:.3f} → {run['final_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def _mean_std(values, decimals=3):
    if len(values) == 1:
        return f"{values[0]:.{decimals}f}"
    return f"{statistics.fmean(values):.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="docs/results/matryoshka.json")
    parser.add_argument("--num_layers", type=int, default=3, help="first layers of all-MiniLM-L6-v2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--query_max_length", type=int, default=64)
    parser.add_argument("--document_max_length", type=int, default=128)
    parser.add_argument("--matryoshka_dims", type=int, nargs="+", default=[256, 128, 64])
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 256, 128, 64],
                        help="the prefixes scored, the full dimension first")
    parser.add_argument("--rescore", type=int, default=100, help="binary shortlist rescored at float32")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval_batch_size", type=int, default=128)
    parser.add_argument("--report", action="store_true", help="only print the tables of --results")
    args = parser.parse_args(argv)

    path = Path(args.results)
    store = json.loads(path.read_text()) if path.is_file() else {}
    if args.report:
        print(report(store))
        return 0
    settings = {k: v for k, v in vars(args).items() if k not in ("results", "report", "seeds", "eval_batch_size")}
    if store.get("settings", settings) != settings:
        sys.exit(f"{path} holds results of other settings: {store['settings']}; use another --results")
    store.update(settings=settings, sets=[list(s) for s in EVALUATION_SETS],
                 machine=f"{platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}")
    evaluation_sets = [(label, load_evaluation(name)) for label, name, _ in EVALUATION_SETS]
    pairs = training_pairs(args.steps * args.batch_size)
    print(f"{len(pairs)} training pairs; {len(evaluation_sets)} evaluation sets", flush=True)
    for seed in args.seeds:
        for name in MODELS:
            key = f"{name}|{seed}"
            if key in store:
                continue
            start = time.perf_counter()
            model, losses = train_one(pairs, "sde", "SamToNe", seed, args,
                                      matryoshka_dims=args.matryoshka_dims if name == "matryoshka" else None)
            trained = time.perf_counter()
            grid = score_grid(model, evaluation_sets, args.dims, args.rescore, args.eval_batch_size)
            store[key] = {"grid": grid, "train_seconds": round(trained - start, 1),
                          "eval_seconds": round(time.perf_counter() - trained, 1),
                          "first_loss": round(float(statistics.fmean(map(float, losses[:10]))), 4),
                          "final_loss": round(float(statistics.fmean(map(float, losses[-10:]))), 4),
                          "cpu_flags": cpu_flags()}
            atomic_write_text(path, json.dumps(store, indent=1) + "\n")
            full = f"{args.dims[0]}|float32"
            print(f"{key}: nDCG@10 {average(grid[full]):.4f} at {args.dims[0]}, "
                  f"{average(grid['128|float32']) if '128|float32' in grid else float('nan'):.4f} at 128 "
                  f"(train {trained - start:.0f} s, eval {time.perf_counter() - trained:.0f} s)", flush=True)
            del model
            keras.backend.clear_session()
            gc.collect()
    print(report(store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
