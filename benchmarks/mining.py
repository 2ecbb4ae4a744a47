"""Does mining hard negatives help here? In-batch negatives only, against the same training with negatives
mined by the zero-shot model, SamToNe, several seeds; every step through the commands a user types.

    python benchmarks/mining.py --json docs/results/mining.json [--seeds 0 1 2] [--tasks scifact squad]

scifact  fine-tune all-MiniLM-L6-v2 on BEIR SciFact's training claims; evaluate SciFact test (nDCG@10)
squad    fine-tune on ReQA SQuAD v1.1 train pairs; evaluate MultiReQA SQuAD dev (P@1)

For each task: `python -m samtone_tf.mine` with the untrained checkpoint (a model_dir holding only its
config, or `--mine_model`), then `python -m samtone_tf.train` on the dataset (in-batch only) and on the mined
file with `--hard_negatives`, same steps, batch, seeds and learning rate. Results are written after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from samtone_tf.atomic import atomic_write_text  # noqa: E402

TASKS = {  # name -> (training dataset, split, evaluation set, metric, mining dataset)
    "scifact": ("beir:scifact", "train", "beir:scifact", "nDCG@10"),
    "squad": ("reqa:squad", "train", "multireqa:squad", "P@1"),
}


def run(command):
    result = subprocess.run([sys.executable, "-m", *command], cwd=REPOSITORY, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def train_command(args, task, dataset, model_dir, seed, extra=()):
    _, split, evaluation, _ = TASKS[task]
    return ["samtone_tf.train", "--dataset", dataset, "--train_split", split, "--model_dir", str(model_dir),
            "--steps", str(args.steps), "--batch_size", str(args.batch_size), "--learning_rate",
            str(args.learning_rate), "--document_max_length", str(args.document_max_length), "--query_max_length",
            "64", "--same_tower", "query", "--seed", str(seed), "--eval_datasets", evaluation, "--no-export",
            "--max_train_pairs", str(args.max_train_pairs), *extra]


def after(model_dir, evaluation, metric):
    records = [json.loads(line) for line in (Path(model_dir) / "metrics.jsonl").read_text().splitlines()]
    phases = {r["phase"]: r["evaluation"][evaluation][metric] for r in records if "phase" in r}
    return phases["before"], phases["after"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="docs/results/mining.json")
    parser.add_argument("--tasks", nargs="+", default=["scifact"], choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-5)
    parser.add_argument("--document_max_length", type=int, default=128)
    parser.add_argument("--max_train_pairs", type=int, default=0, help="0: all the task's pairs")
    parser.add_argument("--hard_negatives", type=int, default=3)
    parser.add_argument("--range_min", type=int, default=10, help="mining: skip the top candidates (false negatives)")
    parser.add_argument("--range_max", type=int, default=50)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--mine_model", default="all-MiniLM-L6-v2", help="the model that mines (default: zero-shot)")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "samtone_mining_benchmark"))
    args = parser.parse_args(argv)

    path = Path(args.json)
    store = json.loads(path.read_text()) if path.is_file() else {}
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "tasks", "seeds", "work_dir")}
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if store.get("settings", settings) != settings:
        raise SystemExit(f"{path} holds results of other settings: {store['settings']}; use another --json")
    store.update(settings=settings, machine=f"{platform.machine()}, {os.cpu_count()} CPUs")
    work = Path(args.work_dir)
    for task in args.tasks:
        dataset, split, evaluation, metric = TASKS[task]
        mined = work / f"{task}-mined.jsonl"
        if not mined.is_file():
            # The untrained checkpoint (the zero-shot model) mines.
            printed = run(["samtone_tf.mine", "--model", args.mine_model, "--dataset", dataset, "--split", split,
                           "--out", str(mined), "--num_negatives", str(args.hard_negatives), "--range_min",
                           str(args.range_min), "--range_max", str(args.range_max), "--margin", str(args.margin)])
            summary = json.loads(Path(f"{mined}.summary.json").read_text())
            summary.pop("dropped_query_ids", None)  # their count is kept; the list stays in the summary file
            store.setdefault(task, {})["mining"] = {"printed": printed.strip().splitlines(), **summary}
            atomic_write_text(path, json.dumps(store, indent=1))
        for seed in args.seeds:
            for condition, training, extra in (("in-batch", dataset, ()),
                                               ("mined", f"flagembedding:{mined}",
                                                ("--hard_negatives", str(args.hard_negatives)))):
                key = f"{condition}|{seed}"
                if key in store.get(task, {}):
                    continue
                model_dir = work / f"{task}-{condition}-{seed}"
                run(train_command(args, task, training, model_dir, seed, extra))
                before, value = after(model_dir, evaluation, metric)
                store.setdefault(task, {})[key] = {metric: value}
                store[task]["zero-shot"] = {metric: before}
                atomic_write_text(path, json.dumps(store, indent=1))
                print(f"{task} {key}: {metric} {value:.4f} (zero-shot {before:.4f})", flush=True)
    for task in args.tasks:
        metric = TASKS[task][3]
        for condition in ("in-batch", "mined"):
            values = [store[task][f"{condition}|{s}"][metric] for s in args.seeds if f"{condition}|{s}" in store[task]]
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                print(f"{task} {condition}: {statistics.fmean(values):.4f} ± {spread:.4f} over {len(values)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
