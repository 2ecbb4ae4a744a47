"""python -m samtone_tf.data stats DATASET: documents, queries, judgements and mean lengths per split."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from samtone_tf.atomic import atomic_write_text
from samtone_tf.data import beir, datasets, msmarco
from samtone_tf.data.errors import DataError
from samtone_tf.data.records import StreamedPairs


def _mean_words(texts):
    total = count = 0
    for text in texts:
        total += len(text.split())
        count += 1
    return round(total / count, 2) if count else 0.0


def evaluation_stats(data):
    return dict(kind="evaluation", **data.counts(),
                mean_query_words=_mean_words(data.queries.values()),
                mean_document_words=_mean_words(data.document_text(d) for d in data.corpus))


def training_stats(pairs):
    pairs = list(pairs) if isinstance(pairs, StreamedPairs) else pairs
    return dict(kind="training", pairs=len(pairs),
                queries=len({p.query_id for p in pairs}), documents=len({p.document_id for p in pairs}),
                hard_negatives=sum(len(p.hard_negatives) for p in pairs),
                mean_query_words=_mean_words(p.query for p in pairs),
                mean_document_words=_mean_words(p.document for p in pairs))


def splits_of(name, data_directory):
    """[(split, "evaluation" | "training")] available for a dataset name."""
    kind, argument = datasets.parse_name(name)
    root = Path(datasets.find_data_dir(data_directory))
    if kind == "reqa":
        if argument in datasets.SQUAD_FILES:
            return [(s, "training" if s == "train" else "evaluation") for s in datasets.SQUAD_FILES[argument]]
        return [("dev", "evaluation")]
    if kind == "multireqa":
        return [("dev", "evaluation")]
    if kind == "wikiqa":
        found = [s for s in ("train", "dev", "test") if (root / "wikiqa" / f"WikiQA-{s}.tsv").is_file()]
        return [(s, "training" if s == "train" else "evaluation") for s in found]
    if kind == "beir":
        return [(s, "evaluation") for s in beir.splits(datasets.beir_directory(argument, root))]
    if kind == "msmarco":
        directory = datasets._path(root, argument)
        found = [("train", "training")] if msmarco.find_triples(directory) else []
        return found + [(p.stem.split(".", 1)[1], "evaluation") for p in sorted(directory.glob("qrels.*.tsv"))]
    return [("train", "training")]


def stats(name, data_directory=None):
    result = {}
    for split, role in splits_of(name, data_directory):
        if role == "training":
            result[split] = training_stats(datasets.load_training_pairs(name, split, data_directory))
        else:
            result[split] = evaluation_stats(datasets.load_evaluation(name, split, data_directory))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m samtone_tf.data",
        description="Inspect benchmark data.\n\nDataset names:\n" + datasets.__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    stats_parser = commands.add_parser("stats", help="counts and mean lengths per split")
    stats_parser.add_argument("dataset", help="e.g. beir:scifact, reqa:squad, wikiqa, msmarco:<dir>")
    stats_parser.add_argument("--data_dir", default=None, help="default: $SAMTONE_DATA, then ../shared/data")
    stats_parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = stats(args.dataset, args.data_dir)
    except (DataError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    columns = ["split", "kind", "documents", "queries", "judgements", "pairs", "mean_query_words",
               "mean_document_words"]
    print(f"{args.dataset}")
    print(" | ".join(columns))
    for split, row in result.items():
        print(" | ".join(str(row.get(c, split if c == "split" else "")) for c in columns))
    if args.json:
        atomic_write_text(args.json, json.dumps({"dataset": args.dataset, "splits": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
