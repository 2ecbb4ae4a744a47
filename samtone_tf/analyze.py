"""python -m samtone_tf.analyze: how a model's two towers share the embedding space.

    python -m samtone_tf.analyze --model runs/default --dataset wikiqa --out analysis/

As in the SamToNe paper's analysis, for a sample of the dataset's queries and of
their relevant documents:

- t-SNE of query and document embeddings of both towers in one picture
  (tsne.png): with the standard loss the two towers' embeddings tend to occupy
  separate regions; same-tower negatives pull them together;
- the histogram of top-1 cosine similarities (top1_similarity.png): for each query,
  its nearest document, and its nearest other query;
- the ratio of the mean query-query to the mean query-document cosine similarity.

Writes the PNG files and analysis.json (the numbers) to --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from samtone_tf.analysis import analyze
from samtone_tf.cli import HelpFormatter, add_verbose, fail, non_negative_int, positive_int, quiet_native_logs


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m samtone_tf.analyze", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="model_dir, .keras file or export directory")
    parser.add_argument("--dataset", required=True, help="e.g. wikiqa, beir:scifact, reqa:squad")
    parser.add_argument("--split", default=None, help="default: the dataset's evaluation split")
    parser.add_argument("--out", default=None, help="default: <model>/analysis/<dataset>")
    parser.add_argument("--max_queries", type=positive_int, default=500, help="queries sampled")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="sampling and t-SNE seed")
    parser.add_argument("--data_dir", default=None, help="default: $SAMTONE_DATA, then ../shared/data")
    add_verbose(parser)
    parser.add_argument("--title", default=None, help="plot title (default: model and dataset names)")
    args = parser.parse_args(argv)
    quiet_native_logs(args.verbose)
    model = Path(args.model)
    base = model.parent if model.suffix == ".keras" else model
    out = Path(args.out) if args.out else base / "analysis" / args.dataset.replace(":", "_").replace("/", "_")
    try:
        numbers = analyze(model, args.dataset, out, args.split, args.max_queries, args.seed, args.data_dir,
                          args.title)
    except (OSError, ValueError) as error:
        return fail(error)
    for key, value in numbers.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {out / 'tsne.png'}, {out / 'top1_similarity.png'}, {out / 'analysis.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
