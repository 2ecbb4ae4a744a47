"""python -m samtone_tf.mine: hard negatives for a dataset's queries, mined with a model and our index.

    python -m samtone_tf.mine --model runs/default --dataset beir:scifact --split train --out mined.jsonl
    python -m samtone_tf.train --dataset flagembedding:mined.jsonl --hard_negatives 3 ...

For each query with a positive, the documents of the dataset's corpus (or --corpus) most similar to it that are
not its positives (by document id) and whose text is neither the query's nor a positive's, within a rank range,
a margin against the lowest positive's score and a score ceiling; top or seeded random sampling. Writes
FlagEmbedding-format JSONL (query, pos, neg) with query_id, pos_ids, neg_ids, scores and ranks (training
id-masks the negatives with these ids), atomically, and a summary (FILE.summary.json, also printed).
"""

from __future__ import annotations

import argparse
import json
import sys

from samtone_tf.atomic import atomic_write_text
from samtone_tf.cli import (HelpFormatter, add_compute_dtype, add_verbose, command_errors, fail, non_negative_int,
                            positive_int, quiet_native_logs)
from samtone_tf.mining import (MARGIN_KINDS, MiningOptions, SAMPLINGS, flagembedding_record, mine_hard_negatives,
                               summarize)
from samtone_tf.options import SEARCH_INDEXES


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m samtone_tf.mine", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="a training model_dir, a .keras file or an export")
    parser.add_argument("--dataset", required=True, help="whose queries and positives (e.g. beir:scifact, reqa:squad)")
    parser.add_argument("--split", default="train", help="the dataset's split")
    parser.add_argument("--corpus", default=None, help="mine from this dataset's corpus instead (default: the dataset's)")
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--num_negatives", type=positive_int, default=3, help="negatives per query")
    parser.add_argument("--range_min", type=non_negative_int, default=0,
                        help="first candidate rank to draw from (0: the most similar non-positive)")
    parser.add_argument("--range_max", type=positive_int, default=100, help="draw from ranks below this")
    parser.add_argument("--margin", type=float, default=None,
                        help="drop candidates within this margin of (or above) the lowest positive's score (default: none)")
    parser.add_argument("--margin_kind", default="absolute", choices=MARGIN_KINDS,
                        help="absolute: score > positive - margin; relative: score > positive x (1 - margin)")
    parser.add_argument("--max_score", type=float, default=None, help="drop candidates scoring above this (default: none)")
    parser.add_argument("--sampling", default="top", choices=SAMPLINGS, help="the most similar, or a seeded random draw")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of --sampling random")
    parser.add_argument("--min_negatives", type=non_negative_int, default=1,
                        help="drop queries left with fewer candidates (they are reported; never padded)")
    parser.add_argument("--index", default="exact", choices=SEARCH_INDEXES, help="search")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="texts per encoding batch")
    add_compute_dtype(parser)
    parser.add_argument("--data_dir", default=None, help="default: $SAMTONE_DATA, then ../shared/data")
    add_verbose(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_native_logs(args.verbose)
    try:
        options = MiningOptions(num_negatives=args.num_negatives, range_min=args.range_min, range_max=args.range_max,
                                margin=args.margin, margin_kind=args.margin_kind, max_score=args.max_score,
                                sampling=args.sampling, seed=args.seed, min_negatives=args.min_negatives)
        from samtone_tf.data.datasets import load_evaluation
        from samtone_tf.index.search import ExactIndex, ScannIndex
        from samtone_tf.models import load_encoder, with_compute_dtype

        refuse_foreign_output(args.out)
        data = load_evaluation(args.dataset, args.split, args.data_dir)
        corpus = load_evaluation(args.corpus, None, args.data_dir).corpus if args.corpus else None
        encoder = with_compute_dtype(load_encoder(args.model), args.compute_dtype)
        index = ExactIndex if args.index == "exact" else (lambda e, ids: ScannIndex(e, ids, k=args.range_max + 16))
        kept, dropped = mine_hard_negatives(encoder, data, options, corpus, index, args.batch_size)
        lines = "".join(json.dumps(flagembedding_record(m, data, corpus), ensure_ascii=False) + "\n" for m in kept)
        summary = dict(summarize(kept, dropped, options), model=args.model, dataset=args.dataset, split=data.split,
                       corpus=args.corpus or args.dataset, index=args.index,
                       dropped_query_ids=[m.query_id for m in dropped][:1000])
        atomic_write_text(args.out, lines)
        atomic_write_text(f"{args.out}.summary.json", json.dumps(summary, indent=1))
    except command_errors() as error:
        return fail(error)
    print(f"{summary['queries']} queries: {summary['kept']} kept with {summary['negatives']} negatives "
          f"({summary['with_fewer_than_num_negatives']} with fewer than {options.num_negatives}), "
          f"{summary['dropped_fewer_than_min_negatives']} dropped with fewer than {options.min_negatives}")
    if summary["negatives"]:
        print(f"negatives: mean rank {summary['mean_negative_rank']:.1f}, mean score {summary['mean_negative_score']:.4f}"
              f" against {summary['mean_lowest_positive_score']:.4f} for the lowest positive "
              f"(gap {summary['mean_positive_minus_negative_score']:.4f})")
    print(f"wrote {args.out} and {args.out}.summary.json")
    return 0


def refuse_foreign_output(out):
    """`--out` may be new or an earlier mining output (a summary of ours beside it); any other file is refused, so a
    typo never replaces a training file or a dataset."""
    from pathlib import Path

    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; name the JSONL file to write")
    if not out.exists():
        return
    try:
        summary = json.loads(Path(f"{out}.summary.json").read_text(encoding="utf-8"))
        ours = isinstance(summary, dict) and {"queries", "kept", "negatives"} <= set(summary)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise ValueError(f"--out {out} exists and is not a mining output of samtone_tf (no {out}.summary.json of "
                         "ours beside it): refusing to replace it; choose another --out")


if __name__ == "__main__":
    sys.exit(main())
