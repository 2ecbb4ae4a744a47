"""Does a larger global batch help SamToNe here? (issue 16, item 4: what gradient caching buys a small machine)

    python benchmarks/batch_size.py                 # the study; resumes where it stopped (docs/results/batch_size.json)
    python benchmarks/batch_size.py --report        # the RESULTS table, from the results file

SamToNe's negatives are the global batch, and `--gradient_cache_chunk` lets a machine train a global batch whose
activations it cannot hold. Whether that pays is measured on the quality benchmark's setting (benchmarks/quality.py:
the full all-MiniLM-L6-v2, query length 64, document length 256, lr 3e-5 with 10% warm-up, τ 0.05, AdamW with
weight decay 0.01, its training pairs, its evaluation sets): ADE with SamToNe at global batch 32 (uncached, 1024
steps) against global batch 512 (gradient-cached in chunks of 32, 64 steps), both one pass over the same 32,768
training pairs (each global batch free of repeated ids: a pair whose id is already in the batch waits for the
next one), seeds 0, 1, 2 (both towers start from the checkpoint; a seed fixes the dropout masks and the shuffle).
Everything else is equal, the learning rate included: the question is the batch, not a retuned schedule.

Reported: each set's primary metric and their average (mean ± standard deviation over seeds), the difference of
the averages (512 − 32) paired by seed, and a paired randomisation test over queries (per-query metric averaged
over the seeds) per set and on the average. Results are written after every run; runs go seed by seed, both
batch sizes of a seed in turn, so a partial study is still paired.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

from machine import cpu_flags, describe  # benchmarks/machine.py, beside this script
from quality import (  # benchmarks/quality.py: the setting this study shares
    EVALUATION_SETS,
    evaluate_all,
    mean_std,
    query_tests,
    runs_table,
    summary,
    train_one,
    training_pairs,
)

import keras

from samtone_tf.atomic import atomic_write_text
from samtone_tf.data.datasets import load_evaluation


def report(store):
    """The Markdown table and verdict of a results store."""
    sets = [tuple(s) for s in store["sets"]]
    runs = store.get("runs", {})
    batches = sorted({int(k.split("|")[0]) for k in runs})
    seeds = sorted({int(k.split("|")[1]) for k in runs})
    lines = ["| global batch | steps | gradient cache chunk | " + " | ".join(f"{label} {metric}" for label, _, metric in sets)
             + " | average | train s (mean) |", "|---:|---:|---|" + "---:|" * (len(sets) + 2)]
    averages = {}
    for batch in batches:
        chosen = [runs[f"{batch}|{s}"] for s in seeds if f"{batch}|{s}" in runs]
        averages[batch] = [summary(r["results"], sets) for r in chosen]
        cells = [mean_std([r["results"][label][metric] for r in chosen]) for label, _, metric in sets]
        chunk = chosen[0]["gradient_cache_chunk"] or "none"
        lines.append(f"| {batch} | {chosen[0]['steps']} | {chunk} | " + " | ".join(cells)
                     + f" | {mean_std(averages[batch])} | {statistics.fmean(r['train_seconds'] for r in chosen):.0f} |")
    text = "\n".join(lines) + "\n"
    if len(batches) == 2:
        small, large = batches
        paired_seeds = [s for s in seeds if f"{small}|{s}" in runs and f"{large}|{s}" in runs]
        paired = [summary(runs[f"{large}|{s}"]["results"], sets) - summary(runs[f"{small}|{s}"]["results"], sets)
                  for s in paired_seeds]
        if paired:
            spread = f" ± {statistics.stdev(paired):.4f} (standard deviation over seeds)" if len(paired) > 1 else ""
            tests = query_tests([runs[f"{large}|{s}"]["results"] for s in paired_seeds],
                                [runs[f"{small}|{s}"]["results"] for s in paired_seeds], sets)
            text += (f"\nBatch {large} − batch {small} on the average: {statistics.fmean(paired):+.4f}{spread}; "
                     f"per seed ({', '.join(map(str, paired_seeds))}): {', '.join(f'{d:+.4f}' for d in paired)}; "
                     f"over queries p = {tests['average']:.4f} on the average.\n\n"
                     "Paired randomisation test over queries (two-sided p; per-query metric averaged over the seeds; "
                     f"10,000 sign flips), batch {large} against batch {small}:\n\n"
                     "| " + " | ".join(label for label, _, _ in sets) + " | average |\n"
                     "|" + "---:|" * (len(sets) + 1) + "\n"
                     "| " + " | ".join(f"{tests[label]:.3f}" for label, _, _ in sets) + f" | {tests['average']:.4f} |\n")
    if runs:
        text += "\n" + runs_table(runs, ("global batch", "seed"))
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="docs/results/batch_size.json")
    parser.add_argument("--batches", type=int, nargs=2, default=[32, 512], help="the small and the large global batch")
    parser.add_argument("--pairs", type=int, default=32_768, help="training pairs seen at either batch size")
    parser.add_argument("--gradient_cache_chunk", type=int, default=32, help="chunk of the large batch's cached step")
    parser.add_argument("--architecture", default="ade")
    parser.add_argument("--loss", default="SamToNe")
    parser.add_argument("--num_layers", type=int, default=None, help="first layers of all-MiniLM-L6-v2 (default: all 6)")
    parser.add_argument("--learning_rate", type=float, default=3e-5)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--query_max_length", type=int, default=64)
    parser.add_argument("--document_max_length", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval_batch_size", type=int, default=128)
    parser.add_argument("--max_runs", type=int, default=None, help="stop after this many new runs (run in parts)")
    parser.add_argument("--report", action="store_true", help="only print the table of --results")
    args = parser.parse_args(argv)

    path = Path(args.results)
    store = json.loads(path.read_text()) if path.is_file() else {}
    if args.report:
        print(report(store))
        return 0
    small, large = sorted(args.batches)
    if args.pairs % large:
        parser.error(f"--pairs {args.pairs} is not a whole number of batches of {large}")
    settings = {k: v for k, v in vars(args).items() if k not in ("results", "report", "seeds", "max_runs",
                                                                  "eval_batch_size")}
    if store.get("settings", settings) != settings:
        sys.exit(f"{path} holds results of other settings: {store['settings']}; use another --results")
    store.update(settings=settings, sets=[list(s) for s in EVALUATION_SETS], machine=describe(),
                 cpu_flags=cpu_flags())
    runs = store.setdefault("runs", {})
    sets = EVALUATION_SETS
    evaluation_sets = [(label, load_evaluation(name), metric) for label, name, metric in sets]
    pairs = training_pairs(args.pairs)
    new_runs = 0
    for seed in args.seeds:
        for batch in (small, large):
            key = f"{batch}|{seed}"
            if key in runs:
                continue
            if args.max_runs is not None and new_runs >= args.max_runs:
                print(report(store))
                return 0
            chunk = args.gradient_cache_chunk if batch == large else None
            condition = argparse.Namespace(**{**vars(args), "batch_size": batch, "steps": args.pairs // batch})
            start = time.perf_counter()
            model, losses = train_one(pairs, args.architecture, args.loss, seed, condition, gradient_cache_chunk=chunk)
            trained = time.perf_counter()
            results = evaluate_all(model, evaluation_sets, args.eval_batch_size)
            runs[key] = {"results": results, "steps": condition.steps, "gradient_cache_chunk": chunk,
                         "train_seconds": round(trained - start, 1),
                         "eval_seconds": round(time.perf_counter() - trained, 1),
                         "first_loss": round(statistics.fmean(losses[:10]), 4),
                         "final_loss": round(statistics.fmean(losses[-10:]), 4),
                         # The study may run in parts on different machines.
                         "cpu_flags": cpu_flags(), "machine": describe()}
            atomic_write_text(path, json.dumps(store, indent=1))
            new_runs += 1
            print(f"{key}: average {summary(results, sets):.4f} (train {trained - start:.0f} s, "
                  f"eval {time.perf_counter() - trained:.0f} s)", flush=True)
            del model
            keras.backend.clear_session()
            gc.collect()
    print(report(store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
