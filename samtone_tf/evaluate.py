"""python -m samtone_tf.evaluate: retrieval metrics of a trained or exported dual encoder.

    python -m samtone_tf.evaluate --model runs/default --dataset beir:scifact --split test

--model is a training model_dir (model.keras or checkpoints), a .keras file, or an
export directory (query_encoder/N and document_encoder/N SavedModels; the newest
version unless --version). Corpus and queries are encoded with progress bars, searched
exactly (TensorFlow) or with ScaNN, and scored: P@1, MRR@10, nDCG@10, Recall@10,
Recall@100. A table is printed and a JSON file written (--out).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from samtone_tf.atomic import atomic_write_text
from samtone_tf.cli import (HelpFormatter, add_code_options, add_compute_dtype, add_verbose, command_errors, fail,
                            positive_int, quiet_native_logs)
from samtone_tf.data.datasets import load_evaluation
from samtone_tf.index.quantized import QuantizedIndex
from samtone_tf.index.search import ExactIndex, ScannIndex, load_index
from samtone_tf.metrics import trec_run_text
from samtone_tf.models import load_encoder, with_compute_dtype
from samtone_tf.options import SEARCH_INDEXES
from samtone_tf.ownership import claim
from samtone_tf.retrieval import DEFAULT_MEASURES, check_prebuilt_index, evaluate_encoder

# BEIR's convention for sets where a query's own id also names a document.
IGNORE_IDENTICAL_IDS = ("arguana", "quora")


def evaluate(model_path, dataset, split=None, index="exact", k=100, batch_size=64, data_dir=None,
             version=None, verbose=True, ignore_identical_ids=None, keep_run=False, index_dir=None, dims=None,
             precision="float32", rescore=None, compute_dtype="float32"):
    """The metrics JSON (as a dict) of the model at `model_path` on `dataset`; with `keep_run`, also the
    ranking scored ("run") and the per-query metrics ("per_query"). With `index_dir`, the corpus is searched in
    that prebuilt index (`python -m samtone_tf.index build`) instead of being encoded again. `dims` (a prefix of
    the embeddings), `precision` (float32, int8, binary) and `rescore` (a shortlist re-scored in float32) score
    the model as a cheaper index would serve it (`index.quantized.QuantizedIndex`, exact search; with `index`
    "scann", `dims` and `rescore` build ScaNN on the prefix, re-ranked at the full dimension). `compute_dtype`
    "bfloat16" encodes with bf16 math (`models.with_compute_dtype`)."""
    quantized = dims is not None or precision != "float32" or rescore is not None
    if quantized and index_dir is not None:
        raise ValueError("--dims, --precision and --rescore make the index: not with --index_dir (a prebuilt index "
                         "was built with its own)")
    if quantized and index == "scann" and (precision != "float32" or dims is None):
        raise ValueError("with --index scann, --dims D [--rescore K] (ScaNN on the prefix, re-ranked at the full "
                         "dimension) without --precision: ScaNN quantizes by itself")
    encoder = with_compute_dtype(load_encoder(model_path, version), compute_dtype)
    data = load_evaluation(dataset, split, data_dir)
    prebuilt = None
    if index_dir is not None:
        prebuilt = load_index(index_dir)
        check_prebuilt_index(prebuilt, data, encoder, index_dir)
        kind = "exact" if isinstance(prebuilt, ExactIndex) else "codes" if hasattr(prebuilt, "precision") else "scann"
        index = f"prebuilt {kind} index {index_dir}"
    if ignore_identical_ids is None:
        ignore_identical_ids = any(name in dataset for name in IGNORE_IDENTICAL_IDS)
    built = []

    def quantized_index(embeddings, doc_ids):
        built.append(QuantizedIndex(embeddings, doc_ids, dims, precision, rescore))
        return built[-1]

    def scann_index(embeddings, doc_ids):
        built.append(ScannIndex(embeddings, doc_ids, k=k, dims=dims, rescore=rescore))
        return built[-1]

    factory = scann_index if index == "scann" else quantized_index if quantized else ExactIndex
    result = evaluate_encoder(encoder, data, DEFAULT_MEASURES, k=k, batch_size=batch_size, verbose=verbose,
                              index_factory=factory, ignore_identical_ids=ignore_identical_ids, keep_run=keep_run,
                              index=prebuilt)
    summary = {
        "model": str(model_path), "dataset": dataset, "split": data.split, "index": index, "k": k,
        "ignore_identical_ids": ignore_identical_ids,
        "metrics": {m: result[m] for m in DEFAULT_MEASURES},
        "queries": result["queries"], "documents": result["documents"], "seconds": result["seconds"],
    }
    searched = built[-1] if built else prebuilt if hasattr(prebuilt, "describe") else None
    if hasattr(searched, "precision"):
        summary["quantization"] = searched.describe()  # dims, precision, rescore, the codes' bytes
    elif searched is not None and searched.describe():
        summary["scann_prefix"] = searched.describe()  # dims, rescore
    if keep_run:
        summary.update(run=result["run"], per_query=result["per_query"])
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m samtone_tf.evaluate", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="model_dir, .keras file or export directory")
    parser.add_argument("--dataset", required=True, help="e.g. beir:scifact, reqa:squad, wikiqa (see "
                                                         "python -m samtone_tf.data --help)")
    parser.add_argument("--split", default=None, help="default: the dataset's evaluation split")
    parser.add_argument("--index", default="exact", choices=SEARCH_INDEXES, help="search")
    add_compute_dtype(parser)
    add_code_options(parser)
    parser.add_argument("--index_dir", default=None,
                        help="search this prebuilt index (python -m samtone_tf.index build) instead of encoding "
                             "the corpus; --index is then ignored (default: none)")
    parser.add_argument("--k", type=positive_int, default=100, help="documents retrieved per query")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="texts per encoding batch")
    parser.add_argument("--data_dir", default=None, help="default: $SAMTONE_DATA, then ../shared/data")
    parser.add_argument("--version", type=positive_int, default=None,
                        help="export version (default: the one the export's manifest commits)")
    add_verbose(parser)
    parser.add_argument("--run_out", default=None,
                        help="also write the ranking scored as a TREC run file here (for trec_eval, pytrec_eval) "
                             "and the per-query metrics beside it (<run_out>.per_query.json); default: none")
    parser.add_argument("--out", default=None,
                        help="metrics JSON path (default: <model>/evaluation/<dataset>-<split>.json; for a pretrained "
                             "checkpoint ./evaluations/<name>/<dataset>-<split>.json)")
    args = parser.parse_args(argv)
    quiet_native_logs(args.verbose)
    try:
        result = evaluate(args.model, args.dataset, args.split, args.index, args.k, args.batch_size,
                          args.data_dir, args.version, keep_run=bool(args.run_out),
                          index_dir=args.index_dir, dims=args.dims, precision=args.precision, rescore=args.rescore,
                          compute_dtype=args.compute_dtype)
    except command_errors() as error:
        return fail(error)
    print(f"\n{result['dataset']} ({result['split']}): {result['queries']} queries, {result['documents']} "
          f"documents, {result['index']} search, model {result['model']}")
    if "quantization" in result:
        q = result["quantization"]
        print(f"  codes: {q['dims']} dimensions, {q['precision']}, {q['code_bytes']:,} bytes"
              + (f", the best {q['rescore']} re-scored in float32" if q["rescore"] else ""))
    if "scann_prefix" in result:
        p = result["scann_prefix"]
        print(f"  ScaNN on the first {p['dims']} dimensions, its best {p['rescore']} re-ranked at the full dimension")
    for measure, value in result["metrics"].items():
        print(f"  {measure:<11}{value:.4f}")
    run, per_query = result.pop("run", None), result.pop("per_query", None)
    try:
        run_text = trec_run_text(run, str(args.model)) if args.run_out else None
        if args.out:
            out = Path(args.out)
        else:
            folder = evaluation_dir(args.model)
            claim(folder, "evaluation", recognise=_only_json_files)
            out = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.dataset)}-{result['split']}.json"
        atomic_write_text(out, json.dumps(result, indent=1))
        print(f"wrote {out}")
        if args.run_out:
            atomic_write_text(args.run_out, run_text)
            atomic_write_text(f"{args.run_out}.per_query.json", json.dumps(per_query, indent=1, sort_keys=True))
            print(f"wrote {args.run_out} (TREC run) and {args.run_out}.per_query.json")
    except ValueError as error:
        return fail(error)
    except OSError as error:
        return fail(f"cannot write the results: {error}")
    return 0


def evaluation_dir(model):
    """Where `evaluate` writes its metrics by default: `<model_dir or export>/evaluation/` (beside a .keras file);
    for a pretrained checkpoint (a name or its directory, which are not ours to write into)
    `./evaluations/<name>/`, a folder no checkpoint name resolves to."""
    path = Path(model)
    if path.suffix == ".keras":
        return path.parent / "evaluation"
    pretrained = not path.exists() or ((path / "vocab.txt").is_file() and not (path / "checkpoints").is_dir())
    if pretrained:
        return Path("evaluations") / re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name or str(model))
    return path / "evaluation"


def _only_json_files(directory):
    """An evaluation folder written before ownership markers: metrics files only."""
    return all(p.is_file() and p.suffix == ".json" for p in Path(directory).iterdir())


if __name__ == "__main__":
    sys.exit(main())
