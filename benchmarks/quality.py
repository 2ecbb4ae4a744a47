"""Does SamToNe train better dual encoders than the standard loss? (the paper's claim)

    python benchmarks/quality.py --results docs/results/quality.json [--num_layers 2 --steps 150 ...]

With identical data, initialisation, steps, batch size and seeds, trains the
standard in-batch softmax (same_tower "none"), SamToNe ("query") and SamToNe on
both sides ("both", bidirectional) for the SDE, ADE and ADE-SPL architectures, and
evaluates every model and the initial checkpoint (zero-shot) on every real
evaluation set in ../shared/data:

    ReQA SQuAD, held-out articles   P@1, MRR@10  (SQuAD 2.0 dev sample: 5 articles never trained on)
    WikiQA test                     P@1, MRR@10
    BEIR SciFact, Cranfield, Medline, CACM, NPL, TREC DL 2019 pool: nDCG@10

Training data is all the training data there: ReQA pairs from SQuAD v1.1 train,
WikiQA train, SciFact train claims, MS MARCO triples and the FlagEmbedding samples
(ids prefixed by source). The summary score of a run is the mean over the 8 sets of
their primary metric (P@1 or nDCG@10). Results are written after every run, so an
interrupted benchmark resumes where it stopped; --report only prints the tables.
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

import samtone_tf  # noqa: F401,I001  (first: it sets TensorFlow's environment)
import keras
import tensorflow as tf

from samtone_tf.atomic import atomic_write_text
from samtone_tf.data.datasets import load_evaluation, load_training_pairs
from samtone_tf.data.pipeline import distributed_training_dataset
from samtone_tf.data.records import TrainingPair
from samtone_tf.pretrained import dual_encoder_from_checkpoint
from samtone_tf.retrieval import evaluate_encoder
from samtone_tf.training import TrainConfig, compile_for_training, make_train_step

EVALUATION_SETS = [  # (label, dataset name, primary metric)
    ("SQuAD held-out", "reqa:squad2-dev-sample/dev-v2.0-sample.json", "P@1"),
    ("WikiQA", "wikiqa", "P@1"),
    ("SciFact", "beir:scifact", "nDCG@10"),
    ("Cranfield", "beir:cranfield", "nDCG@10"),
    ("Medline", "beir:medline", "nDCG@10"),
    ("CACM", "beir:cacm", "nDCG@10"),
    ("NPL", "beir:npl", "nDCG@10"),
    ("DL19 pool", "beir:trec-dl-2019-pool", "nDCG@10"),
]
LOSSES = {  # label -> (same_tower, bidirectional)
    "standard": ("none", False),
    "SamToNe": ("query", False),
    "SamToNe both+bi": ("both", True),
}
ARCHITECTURES = ("sde", "ade", "ade_spl")
TRAINING_SOURCES = [  # (id prefix, dataset, split)
    ("squad", "reqa:squad", "train"),
    ("wikiqa", "wikiqa", "train"),
    ("scifact", "beir:scifact", "train"),
    ("marco", "msmarco:msmarco/train-triples-sample", "train"),
    ("nq", "flagembedding:flagembedding-samples/nq.jsonl", "train"),
    ("marcofe", "flagembedding:flagembedding-samples/msmarco.jsonl", "train"),
]


def training_mixture(squad_pairs):
    """Every training pair available, ids prefixed by source; SQuAD capped at `squad_pairs`."""
    pairs = []
    for prefix, name, split in TRAINING_SOURCES:
        limit = squad_pairs if prefix == "squad" else None
        for pair in load_training_pairs(name, split, max_pairs=limit):
            pairs.append(TrainingPair(f"{prefix}:{pair.query_id}", pair.query, f"{prefix}:{pair.document_id}",
                                      pair.document))
    return pairs


def train_one(pairs, architecture, loss, seed, args):
    same_tower, bidirectional = LOSSES[loss]
    keras.utils.set_random_seed(seed)
    model = dual_encoder_from_checkpoint(architecture=architecture, num_layers=args.num_layers,
                                         query_max_length=args.query_max_length,
                                         document_max_length=args.document_max_length,
                                         temperature=args.temperature)
    config = TrainConfig(batch_size=args.batch_size, same_tower=same_tower, bidirectional=bidirectional,
                         optimizer="adamw", weight_decay=0.01, learning_rate=args.learning_rate, steps=args.steps,
                         temperature=args.temperature)
    compile_for_training(model, config)
    strategy = tf.distribute.get_strategy()
    step = make_train_step(strategy, model)
    dataset = distributed_training_dataset(strategy, pairs, args.batch_size, seed=seed, unique_ids=True,
                                           tokenize=model.tokenize_inputs)
    losses = []
    for batch, _ in zip(dataset, range(args.steps)):
        losses.append(step(batch))
    return model, losses


def evaluate_all(model, evaluation_sets, batch_size):
    results = {}
    for label, data, _ in evaluation_sets:
        result = evaluate_encoder(model, data, batch_size=batch_size, verbose=False)
        results[label] = {m: result[m] for m in ("P@1", "MRR@10", "nDCG@10", "Recall@100")}
    return results


def summary(results):
    return statistics.fmean(results[label][metric] for label, _, metric in EVALUATION_SETS)


def report(store, args):
    lines = []
    zero = store.get("zero-shot")
    header = "| architecture | loss | " + " | ".join(
        f"{label} {metric}" for label, _, metric in EVALUATION_SETS) + " | average |"
    lines += [header, "|---|---|" + "---:|" * (len(EVALUATION_SETS) + 1)]
    if zero:
        cells = [f"{zero['results'][label][metric]:.3f}" for label, _, metric in EVALUATION_SETS]
        lines.append("| (initial checkpoint) | zero-shot | " + " | ".join(cells) + f" | {summary(zero['results']):.3f} |")
    verdicts = []
    for architecture in ARCHITECTURES:
        averages = {}
        for loss in LOSSES:
            runs = [store[k] for k in store if k.startswith(f"{architecture}|{loss}|")]
            if not runs:
                continue
            cells = []
            for label, _, metric in EVALUATION_SETS:
                values = [r["results"][label][metric] for r in runs]
                cells.append(_mean_std(values))
            averages[loss] = [summary(r["results"]) for r in runs]
            lines.append(f"| {architecture} | {loss} | " + " | ".join(cells) + f" | {_mean_std(averages[loss])} |")
        base = averages.get("standard")
        for loss in ("SamToNe", "SamToNe both+bi"):
            if base and loss in averages and len(base) > 1 and len(averages[loss]) > 1:
                gain = statistics.fmean(averages[loss]) - statistics.fmean(base)
                spread = max(statistics.stdev(base), statistics.stdev(averages[loss]))
                # A seed fixes initialisation of new layers and the data order for both losses: pair by seed.
                paired = [summary(store[f"{architecture}|{loss}|{seed}"]["results"])
                          - summary(store[f"{architecture}|standard|{seed}"]["results"])
                          for seed in _seeds(store)
                          if f"{architecture}|{loss}|{seed}" in store and f"{architecture}|standard|{seed}" in store]
                verdicts.append(f"- {architecture}: {loss} − standard = {gain:+.4f} on the average "
                                f"(largest standard deviation {spread:.4f}): "
                                + ("beyond one standard deviation" if gain > spread else
                                   "better, within one standard deviation" if gain > 0 else "not better")
                                + f"; paired by seed: {', '.join(f'{d:+.4f}' for d in paired)}")
    text = ("\n".join(lines) + "\n\nMean ± standard deviation over the seeds run (" + ", ".join(map(str, _seeds(store)))
            + "); a single number is one run (seed 0).\n\n")
    return text + "\n".join(verdicts) + "\n"


def _seeds(store):
    return sorted({int(k.rsplit("|", 1)[1]) for k in store if k.count("|") == 2})


def _mean_std(values):
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="docs/results/quality.json")
    parser.add_argument("--num_layers", type=int, default=2, help="first layers of all-MiniLM-L6-v2 to keep")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--query_max_length", type=int, default=32)
    parser.add_argument("--document_max_length", type=int, default=64)
    parser.add_argument("--squad_pairs", type=int, default=3000, help="SQuAD pairs in the training mixture")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES),
                        help="loss variants to train (labels as in the tables)")
    parser.add_argument("--eval_batch_size", type=int, default=256)
    parser.add_argument("--save_models", default=None,
                        help="save seed 0's models (model.keras) under this directory, for analyze.py")
    parser.add_argument("--report", action="store_true", help="only print the tables of --results")
    args = parser.parse_args(argv)

    path = Path(args.results)
    store = json.loads(path.read_text()) if path.is_file() else {}
    if args.report:
        print(report(store, args))
        return 0
    # Which runs to do (seeds, architectures, losses) may change between invocations of one results file;
    # what a run means may not.
    settings = {k: v for k, v in vars(args).items()
                if k not in ("results", "report", "save_models", "seeds", "architectures", "losses")}
    if store.get("settings", settings) != settings:
        sys.exit(f"{path} holds results of other settings: {store['settings']}; use another --results")
    store["settings"] = settings
    store["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}"

    started = time.perf_counter()
    evaluation_sets = [(label, load_evaluation(name), metric) for label, name, metric in EVALUATION_SETS]
    pairs = training_mixture(args.squad_pairs)
    print(f"{len(pairs)} training pairs; {len(evaluation_sets)} evaluation sets, "
          f"{sum(len(d.corpus) for _, d, _ in evaluation_sets)} documents", flush=True)

    if "zero-shot" not in store:
        model = dual_encoder_from_checkpoint(architecture="sde", num_layers=args.num_layers,
                                             query_max_length=args.query_max_length,
                                             document_max_length=args.document_max_length)
        start = time.perf_counter()
        store["zero-shot"] = {"results": evaluate_all(model, evaluation_sets, args.eval_batch_size),
                              "seconds": time.perf_counter() - start}
        atomic_write_text(path, json.dumps(store, indent=1))
        print(f"zero-shot: average {summary(store['zero-shot']['results']):.4f} "
              f"({store['zero-shot']['seconds']:.0f} s)", flush=True)

    for seed in args.seeds:
        for architecture in args.architectures:
            for loss in args.losses:
                key = f"{architecture}|{loss}|{seed}"
                if key in store:
                    continue
                start = time.perf_counter()
                model, losses = train_one(pairs, architecture, loss, seed, args)
                trained = time.perf_counter()
                results = evaluate_all(model, evaluation_sets, args.eval_batch_size)
                store[key] = {"results": results, "train_seconds": trained - start,
                              "eval_seconds": time.perf_counter() - trained,
                              "final_loss": statistics.fmean(losses[-10:])}
                atomic_write_text(path, json.dumps(store, indent=1))
                if args.save_models and seed == 0:
                    Path(args.save_models).mkdir(parents=True, exist_ok=True)
                    model.save(Path(args.save_models) / f"{architecture}-{loss.replace(' ', '_')}.keras")
                print(f"{key}: average {summary(results):.4f}  (train {trained - start:.0f} s, "
                      f"eval {time.perf_counter() - trained:.0f} s, total {time.perf_counter() - started:.0f} s)",
                      flush=True)
                del model
                keras.backend.clear_session()
                gc.collect()
    print(report(store, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
