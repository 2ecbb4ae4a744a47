"""Does SamToNe train better dual encoders than the standard loss? (the paper's claim, at full model size)

    python benchmarks/quality.py                       # the published grid; resumes where it stopped
    python benchmarks/quality.py --report              # the RESULTS tables, from the results file
    python benchmarks/quality.py --eval_sets beir:/path/to/my-beir-dir --save_models /tmp/quality-models

With identical data, initialisation, steps, batch size and seeds, fine-tunes the full all-MiniLM-L6-v2
(6 layers) with the standard in-batch softmax (same_tower "none") and with SamToNe (same_tower "query"), for
ADE, ADE-SPL and SDE, seeds 0, 1, 2 (ADE and ADE-SPL seed by seed, then SDE: the goal is about ADE and
ADE-SPL), and evaluates every
model and the same checkpoint untrained (zero-shot, same sequence lengths) on sets none of them trained on:

    MultiReQA SQuAD dev, official candidates   P@1, MRR@10     (10,570 questions, 10,250 sentences)
    WikiQA test                                 P@1, MRR@10
    BEIR SciFact test (documents up to 256 tokens), Cranfield, Medline, CACM, NPL, TREC DL 2019 pool: nDCG@10

The summary score of a run is the mean of the sets' primary metrics (P@1 or nDCG@10). Significance: for each
architecture, a paired randomisation test over queries (per-query metric averaged over the seeds, SamToNe
against standard; 10,000 sign flips) per set and on the average. Results, per-query metrics included, are
written after every run, so the grid can be run in parts and resumes where it stopped (`--seeds`,
`--architectures`, `--losses` choose a part); `--eval_sets` adds sets (dataset names, or beir:<directory>),
evaluating saved models (`--save_models`) where they exist.

Training data: ReQA pairs of SQuAD v1.1 train (in-domain for the MultiReQA SQuAD dev set, whose questions and
articles are not in train) and the other training data in ../shared/data (WikiQA train, SciFact train claims,
MS MARCO triples, FlagEmbedding samples), ids prefixed by source; steps x batch pairs in all, one pass.
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
import numpy as np
import tensorflow as tf
from machine import cpu_flags, vector_class  # benchmarks/machine.py, beside this script

from samtone_tf.atomic import atomic_write_text
from samtone_tf.data.datasets import load_evaluation, load_training_pairs
from samtone_tf.data.pipeline import distributed_training_dataset
from samtone_tf.data.records import TrainingPair
from samtone_tf.metrics import paired_randomization_test
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint
from samtone_tf.retrieval import evaluate_encoder
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.step import compile_for_training, make_train_step

EVALUATION_SETS = [  # (label, dataset name, primary metric)
    ("MultiReQA SQuAD", "multireqa:squad", "P@1"),
    ("WikiQA", "wikiqa", "P@1"),
    ("SciFact", "beir:scifact", "nDCG@10"),
    ("Cranfield", "beir:cranfield", "nDCG@10"),
    ("Medline", "beir:medline", "nDCG@10"),
    ("CACM", "beir:cacm", "nDCG@10"),
    ("NPL", "beir:npl", "nDCG@10"),
    ("DL19 pool", "beir:trec-dl-2019-pool", "nDCG@10"),
]
# The first study (docs/results/quality.json): one transformer layer, a 5-article SQuAD sample.
LEGACY_SETS = [("SQuAD held-out", "reqa:squad2-dev-sample/dev-v2.0-sample.json", "P@1")] + EVALUATION_SETS[1:]
LOSSES = {  # label -> (same_tower, bidirectional)
    "standard": ("none", False),
    "SamToNe": ("query", False),
    "SamToNe both+bi": ("both", True),
}
ARCHITECTURES = ("ade", "ade_spl", "sde")
OTHER_TRAINING_SOURCES = [  # (id prefix, dataset, split)
    ("wikiqa", "wikiqa", "train"),
    ("scifact", "beir:scifact", "train"),
    ("marco", "msmarco:msmarco/train-triples-sample", "train"),
    ("nq", "flagembedding:flagembedding-samples/nq.jsonl", "train"),
    ("marcofe", "flagembedding:flagembedding-samples/msmarco.jsonl", "train"),
]
REPORTED = ("P@1", "MRR@10", "nDCG@10", "Recall@100")


def training_pairs(total):
    """`total` pairs: every pair of the other sources, then ReQA SQuAD train to fill up; ids prefixed by source."""
    pairs = []
    for prefix, name, split in OTHER_TRAINING_SOURCES:
        pairs += [_prefixed(prefix, pair) for pair in load_training_pairs(name, split)]
    squad = load_training_pairs("reqa:squad", "train", max_pairs=max(0, total - len(pairs)))
    return [_prefixed("squad", pair) for pair in squad] + pairs


def _prefixed(prefix, pair):
    return TrainingPair(f"{prefix}:{pair.query_id}", pair.query, f"{prefix}:{pair.document_id}", pair.document)


def new_model(architecture, args):
    return dual_encoder_from_checkpoint(architecture=architecture, num_layers=args.num_layers,
                                        query_max_length=args.query_max_length,
                                        document_max_length=args.document_max_length, temperature=args.temperature)


def train_one(pairs, architecture, loss, seed, args, gradient_cache_chunk=None, matryoshka_dims=None):
    """`args.steps` steps of `args.batch_size` on `pairs` (gradient-cached in chunks of `gradient_cache_chunk` rows
    when given; with the loss also at the prefixes `matryoshka_dims`, equally weighted, when given). -> (model,
    the loss of every step)."""
    same_tower, bidirectional = LOSSES[loss]
    keras.utils.set_random_seed(seed)
    model = new_model(architecture, args)
    config = TrainConfig(batch_size=args.batch_size, same_tower=same_tower, bidirectional=bidirectional,
                         optimizer="adamw", weight_decay=0.01, learning_rate=args.learning_rate, steps=args.steps,
                         temperature=args.temperature, matryoshka_dims=matryoshka_dims)
    compile_for_training(model, config)
    strategy = tf.distribute.get_strategy()
    step = make_train_step(strategy, model, gradient_cache_chunk=gradient_cache_chunk)
    dataset = distributed_training_dataset(strategy, pairs, args.batch_size, seed=seed, unique_ids=True,
                                           tokenize=model.tokenize_inputs)
    losses = []
    for batch, _ in zip(dataset, range(args.steps)):
        losses.append(step(batch))
    return model, losses


def evaluate_all(model, evaluation_sets, batch_size, done=()):
    """{label: {measure: value, "per_query": {query_id: primary metric}}} for the sets not in `done`."""
    results = {}
    for label, data, metric in evaluation_sets:
        if label in done:
            continue
        result = evaluate_encoder(model, data, batch_size=batch_size, verbose=False, keep_run=True)
        results[label] = {m: result[m] for m in REPORTED}
        results[label]["per_query"] = {q: round(v[metric], 6) for q, v in result["per_query"].items()}
    return results


def read_store(path):
    """The results store in `path` ({} when there is none), each run's per-query metrics as {query_id: value}."""
    return expanded(json.loads(path.read_text())) if path.is_file() else {}


def expanded(store):
    """`store` as read from a results file (the JSON), with each run's per-query metrics as {query_id: value}
    (write_store stores them as lists in the order of "query_ids"). Changes `store`."""
    query_ids = store.pop("query_ids", {})
    for run in _runs(store).values():
        for label, result in run["results"].items():
            if isinstance(result.get("per_query"), list):
                result["per_query"] = dict(zip(query_ids[label], result["per_query"], strict=True))
    return store


def write_store(path, store):
    """Writes `store` to `path` atomically and compactly: every set's query ids once ("query_ids"), each run's
    per-query metrics as a list in that order, and lists on one line (a dict per query made the file 5 MB at 13
    runs)."""
    stored = dict(store)
    query_ids = {}
    for key, run in _runs(store).items():
        results = {}
        for label, result in run["results"].items():
            result = dict(result)
            if "per_query" in result:
                ids = query_ids.setdefault(label, sorted(result["per_query"]))
                if result["per_query"].keys() != set(ids):
                    raise ValueError(f"{path}: run {key} scored other {label} queries than the runs before it")
                result["per_query"] = [result["per_query"][q] for q in ids]
            results[label] = result
        stored[key] = {**run, "results": results}
    stored["query_ids"] = query_ids
    atomic_write_text(path, _json_text(stored) + "\n")


def _runs(store):
    """{key: run} of the entries of `store` that are runs (the zero-shot one included), not settings or sets."""
    return {key: run for key, run in store.items() if isinstance(run, dict) and "results" in run}


def _json_text(value, depth=0):
    """JSON with one key per line in dicts and every list on one line."""
    if not isinstance(value, dict) or not value:
        return json.dumps(value, ensure_ascii=False)
    inner = " " * (depth + 1)
    items = [f"{inner}{json.dumps(key, ensure_ascii=False)}: {_json_text(item, depth + 1)}"
             for key, item in value.items()]
    return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"


def summary(results, sets):
    return statistics.fmean(results[label][metric] for label, _, metric in sets)


def report(store, args=None):
    """The Markdown tables and verdicts of a results store (the full study, or the legacy 1-layer one)."""
    sets = [tuple(s) for s in store.get("sets", LEGACY_SETS)]
    lines = []
    header = "| architecture | loss | " + " | ".join(f"{label} {metric}" for label, _, metric in sets) + " | average |"
    lines += [header, "|---|---|" + "---:|" * (len(sets) + 1)]
    zero = store.get("zero-shot")
    if zero:
        cells = [f"{zero['results'][label][metric]:.3f}" for label, _, metric in sets]
        lines.append("| (initial checkpoint) | zero-shot | " + " | ".join(cells) + f" | {summary(zero['results'], sets):.3f} |")
    verdicts, significance = [], []
    runs = {key: value for key, value in store.items() if key.count("|") == 2}
    architectures = [a for a in ("sde", "ade", "ade_spl") if any(k.startswith(f"{a}|") for k in runs)]
    for architecture in architectures:
        averages = {}
        for loss in LOSSES:
            chosen = [runs[k] for k in sorted(runs) if k.startswith(f"{architecture}|{loss}|")]
            if not chosen:
                continue
            cells = [mean_std([r["results"][label][metric] for r in chosen]) for label, _, metric in sets]
            averages[loss] = [summary(r["results"], sets) for r in chosen]
            lines.append(f"| {architecture} | {loss} | " + " | ".join(cells) + f" | {mean_std(averages[loss])} |")
        base = averages.get("standard")
        for loss in ("SamToNe", "SamToNe both+bi"):
            if not (base and loss in averages):
                continue
            # Only the seeds both losses have: a seed's own luck must not count as the loss's effect.
            seeds = [s for s in _seeds(runs) if f"{architecture}|{loss}|{s}" in runs
                     and f"{architecture}|standard|{s}" in runs]
            if not seeds:
                continue
            ours = [summary(runs[f"{architecture}|{loss}|{s}"]["results"], sets) for s in seeds]
            theirs = [summary(runs[f"{architecture}|standard|{s}"]["results"], sets) for s in seeds]
            paired = [a - b for a, b in zip(ours, theirs)]
            gain = statistics.fmean(paired)
            if len(seeds) > 1:
                spread = max(statistics.stdev(theirs), statistics.stdev(ours))
                beyond = ("beyond one standard deviation" if gain > spread else
                          "better, within one standard deviation" if gain > 0 else "not better")
                spread_text = f" (largest standard deviation {spread:.4f}): {beyond}"
            else:
                spread_text = " (one seed so far)"
            line = (f"- {architecture}: {loss} − standard = {gain:+.4f} on the average over seed"
                    f"{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}{spread_text}; "
                    f"paired by seed: {', '.join(f'{d:+.4f}' for d in paired)}")
            tests = query_tests([runs[f"{architecture}|{loss}|{s}"]["results"] for s in seeds],
                                [runs[f"{architecture}|standard|{s}"]["results"] for s in seeds], sets)
            if tests:
                line += f"; over queries p = {tests['average']:.4f} on the average"
                significance.append(f"| {architecture} | {loss} | " + " | ".join(
                    _p_value(tests[label]) if label in tests else "–" for label, _, _ in sets)
                    + f" | {tests['average']:.4f} |")
            verdicts.append(line)
    text = "\n".join(lines) + "\n\nMean ± standard deviation over the seeds run (" + ", ".join(
        map(str, _seeds(runs))) + "); a single number is one run.\n\n" + "\n".join(verdicts) + "\n"
    if significance:
        text += ("\nPaired randomisation test over queries (two-sided p; per-query metric averaged over the seeds; "
                 "10,000 sign flips), SamToNe against standard:\n\n"
                 "| architecture | loss | " + " | ".join(label for label, _, _ in sets) + " | average |\n"
                 "|---|---|" + "---:|" * (len(sets) + 1) + "\n" + "\n".join(significance) + "\n")
    if runs and all("cpu_flags" in run for run in runs.values()):  # the legacy 1-layer study did not record them
        text += "\n" + runs_table(runs)
    return text


def runs_table(runs, key_columns=("architecture", "loss", "seed")):
    """One row per run in the order they ran: its key's parts (`key_columns`, the key split at "|"), the CPU it
    ran on, its training and evaluation seconds, and its training loss (mean of the first and of the last 10
    steps)."""
    lines = ["| run | " + " | ".join(key_columns) + " | CPU | train s | eval s | training loss first → last |",
             "|---:|" + "".join("---:|" if all(key.split("|")[i].isdigit() for key in runs) else "---|"
                                 for i in range(len(key_columns))) + "---|---:|---:|---|"]
    for number, (key, run) in enumerate(runs.items(), 1):
        lines.append(f"| {number} | " + " | ".join(key.split("|")) + f" | {vector_class(run.get('cpu_flags', []))} | "
                     f"{run['train_seconds']:.0f} | {run['eval_seconds']:.0f} | "
                     f"{run['first_loss']:.3f} → {run['final_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def query_tests(ours, theirs, sets):
    """{set label: p, "average": p}: paired randomisation test over queries, condition `ours` against `theirs`.

    ours, theirs: the `results` of each condition's runs, one per seed, paired by seed (same length and order).
    A query's metric is averaged over the seeds of each condition, then ours − theirs is tested (10,000 sign
    flips) per set and over all sets' queries. Empty when there are no runs or a run lacks per-query values.
    """
    if not ours or any("per_query" not in results[label] for results in ours + theirs for label, _, _ in sets):
        return {}
    differences = {}
    for label, _, _ in sets:
        queries = sorted(theirs[0][label]["per_query"])
        mean = [np.mean([[results[label]["per_query"][q] for q in queries] for results in runs], axis=0)
                for runs in (ours, theirs)]
        differences[label] = mean[0] - mean[1]
    tests = {label: paired_randomization_test(d) for label, d in differences.items()}
    tests["average"] = paired_randomization_test(list(differences.values()))
    return tests


def run_order(seeds, architectures):
    """[(seed, architecture)] in the order the grid runs them: seed by seed, SDE after every other run.

    ADE and ADE-SPL, which the claim is about, get all their seeds before SDE starts (the grid runs in parts).
    """
    pairs = [(seed, architecture) for seed in seeds for architecture in architectures]
    return sorted(pairs, key=lambda pair: (pair[1] == "sde", seeds.index(pair[0]), architectures.index(pair[1])))


def _seeds(runs):
    return sorted({int(k.rsplit("|", 1)[1]) for k in runs})


def _p_value(p):
    """3 decimals, or 4 below 0.001 (a randomisation test of 10,000 flips reaches 0.0001, which 0.000 would hide)."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.4f}"


def mean_std(values):
    """The values as "mean ± standard deviation" (3 decimals); the value alone for one run."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def _extra_sets(names):
    """(label, dataset name[@split], primary metric) of the --eval_sets."""
    return [(name, name, "nDCG@10") for name in names]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="docs/results/quality-full.json")
    parser.add_argument("--num_layers", type=int, default=None, help="first layers of all-MiniLM-L6-v2 (default: all 6)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-5)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--query_max_length", type=int, default=64)
    parser.add_argument("--document_max_length", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--losses", nargs="+", default=["standard", "SamToNe"], choices=list(LOSSES),
                        help="loss variants to train (labels as in the tables)")
    parser.add_argument("--eval_sets", nargs="*", default=[],
                        help="more evaluation sets (dataset names or beir:<directory>; nDCG@10 as their metric)")
    parser.add_argument("--eval_batch_size", type=int, default=128)
    parser.add_argument("--save_models", default=None, help="save every trained model (model.keras) here")
    parser.add_argument("--max_runs", type=int, default=None, help="stop after this many new runs (run in parts)")
    parser.add_argument("--report", action="store_true", help="only print the tables of --results")
    args = parser.parse_args(argv)

    path = Path(args.results)
    store = read_store(path)
    if args.report:
        print(report(store, args))
        return 0
    # Which runs and which extra sets may change between invocations of one results file; what a run means may not.
    settings = {k: v for k, v in vars(args).items()
                if k not in ("results", "report", "save_models", "seeds", "architectures", "losses", "eval_sets",
                             "max_runs", "eval_batch_size")}
    if store.get("settings", settings) != settings:
        sys.exit(f"{path} holds results of other settings: {store['settings']}; use another --results")
    sets = [list(s) for s in EVALUATION_SETS + _extra_sets(args.eval_sets)]
    known = [list(s) for s in store.get("sets", [])]
    store.update(settings=settings, sets=known + [s for s in sets if s not in known])
    store["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}"
    sets = [tuple(s) for s in store["sets"]]

    started = time.perf_counter()
    evaluation_sets = [(label, load_evaluation(name.partition("@")[0], name.partition("@")[2] or None), metric)
                       for label, name, metric in sets]
    pairs = training_pairs(args.steps * args.batch_size)
    print(f"{len(pairs)} training pairs ({args.steps} steps of {args.batch_size}); {len(evaluation_sets)} evaluation "
          f"sets, {sum(len(d.queries) for _, d, _ in evaluation_sets)} queries, "
          f"{sum(len(d.corpus) for _, d, _ in evaluation_sets)} documents", flush=True)

    def save():
        write_store(path, store)

    zero = store.setdefault("zero-shot", {"results": {}})
    missing = [label for label, _, _ in sets if label not in zero["results"]]
    if missing:
        start = time.perf_counter()
        zero["results"].update(evaluate_all(new_model("sde", args), evaluation_sets, args.eval_batch_size,
                                            done=zero["results"]))
        zero["seconds"] = zero.get("seconds", 0) + time.perf_counter() - start
        save()
        print(f"zero-shot: average {summary(zero['results'], sets):.4f} ({zero['seconds']:.0f} s)", flush=True)

    new_runs = 0
    for seed, architecture in run_order(args.seeds, args.architectures):
        for loss in args.losses:
            key = f"{architecture}|{loss}|{seed}"
            saved = Path(args.save_models or "") / f"{architecture}-{loss.replace(' ', '_')}-{seed}.keras"
            if key in store and all(label in store[key]["results"] for label, _, _ in sets):
                continue
            if key in store and args.save_models and saved.is_file():
                model = keras.saving.load_model(saved)
                store[key]["results"].update(evaluate_all(model, evaluation_sets, args.eval_batch_size,
                                                          done=store[key]["results"]))
                save()
                continue
            if args.max_runs is not None and new_runs >= args.max_runs:
                print(report(store, args))
                return 0
            start = time.perf_counter()
            model, losses = train_one(pairs, architecture, loss, seed, args)
            trained = time.perf_counter()
            results = evaluate_all(model, evaluation_sets, args.eval_batch_size)
            store[key] = {"results": results, "train_seconds": round(trained - start, 1),
                          "eval_seconds": round(time.perf_counter() - trained, 1),
                          "first_loss": round(statistics.fmean(losses[:10]), 4),
                          "final_loss": round(statistics.fmean(losses[-10:]), 4),
                          # Runs of one grid may come from different machines (the grid runs in parts).
                          "cpu_flags": cpu_flags()}
            save()
            new_runs += 1
            if args.save_models:
                saved.parent.mkdir(parents=True, exist_ok=True)
                model.save(saved)
            print(f"{key}: average {summary(results, sets):.4f}  (train {trained - start:.0f} s, "
                  f"eval {time.perf_counter() - trained:.0f} s, total {time.perf_counter() - started:.0f} s)",
                  flush=True)
            del model
            keras.backend.clear_session()
            gc.collect()
    print(report(store, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
