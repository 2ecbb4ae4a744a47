"""python -m samtone_tf.export: servable SavedModels of a dual encoder, trained here or published.

    python -m samtone_tf.export --model_dir runs/default --out exports/squad [--corpus beir:scifact]
    python -m samtone_tf.export --model all-MiniLM-L6-v2 --out exports/minilm   # a pretrained checkpoint, untrained
    python -m samtone_tf.export --check exports/squad
    python -m samtone_tf.export --model_dir runs/default --format sentence-transformers --out st/squad

The first writes the next version of query_encoder, document_encoder and, with --corpus, a
retriever (exact search in pure TensorFlow ops) and a ScaNN index, then models.config (for
TensorFlow Serving, base paths under --serving_root, each model pinned to the new version) and,
last, manifest.json: a version is whole or absent (see samtone_tf.serving and export/README.md).

--check loads every model of an export the way TensorFlow Serving does (a TF1 session, the
"serve" tag, the saver's restore op), runs its serving_default signature on sample texts, compares
with tf.saved_model.load, and prints OK or the problem per model: run it before deploying.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from samtone_tf.cli import (HelpFormatter, add_code_options, add_compute_dtype, add_verbose, command_errors, fail,
                            positive_int, quiet_native_logs)
from samtone_tf.options import EXPORT_FORMATS, SERVED_RETRIEVERS
from samtone_tf.serving import DEFAULT_SERVING_ROOT, check_export, export
from samtone_tf.training.run_dir import RunLockedError, read_jsonl_records


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m samtone_tf.export", description=__doc__,
                                     formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model_dir", help="a training model_dir (model.keras or checkpoints)")
    source.add_argument("--model", metavar="NAME_OR_PATH",
                        help="any model evaluate takes: a training model_dir, a .keras file, or a local Hugging Face "
                             "checkpoint (a directory, or a name under $SAMTONE_MODELS / ../shared/models) exported "
                             "untrained as an SDE (default: none)")
    parser.add_argument("--query_max_length", type=positive_int, default=None,
                        help="with --model CHECKPOINT: the query tower's max tokens (default: the checkpoint's)")
    parser.add_argument("--document_max_length", type=positive_int, default=None,
                        help="with --model CHECKPOINT: the document tower's max tokens (default: the checkpoint's)")
    parser.add_argument("--out", help="the export directory")
    parser.add_argument("--format", default="tf-serving", choices=EXPORT_FORMATS,
                        help="tf-serving: versioned SavedModels and models.config; sentence-transformers: a "
                             "directory SentenceTransformer(DIR) loads (PyTorch), with a model card")
    parser.add_argument("--check", metavar="EXPORT_DIR", default=None,
                        help="check an export as TF Serving would load it, instead of exporting (default: off)")
    parser.add_argument("--corpus", default=None,
                        help="a dataset whose corpus to index and serve (e.g. beir:scifact); default: none")
    parser.add_argument("--corpus_split", default=None, help="the split of --corpus (default: its test split)")
    parser.add_argument("--data_dir", default=None, help="default: $SAMTONE_DATA, then ../shared/data")
    parser.add_argument("--version", type=positive_int, default=None, help="default: one more than the newest")
    parser.add_argument("--k", type=positive_int, default=10, help="documents the retriever returns per query (default: 10)")
    parser.add_argument("--serving_root", default=DEFAULT_SERVING_ROOT,
                        help="where the export directory is mounted for TF Serving; models.config's base paths "
                             f"are under it (default: {DEFAULT_SERVING_ROOT}, the TF Serving container's)")
    parser.add_argument("--target_recall", type=float, default=None,
                        help="with --corpus: build the fastest ScaNN index reaching this recall@k against exact "
                             "search, measured on the corpus's queries on this machine (default: ScaNN's defaults)")
    parser.add_argument("--retriever", default="exact", choices=SERVED_RETRIEVERS,
                        help="with --corpus: the retriever SavedModel searches every document (exact) or the "
                             "nearest k-means partitions (partitioned: for corpora too large to search exactly "
                             "per query); of sqrt(N), 2 sqrt(N) and 4 sqrt(N) partitions, the fastest at "
                             "--target_recall (default 0.95) on this machine, probing as few as reach it")
    add_code_options(parser, scope="with --corpus, the retriever in stock TensorFlow ops (each encoder gets a "
                                   "signature dims_D too): ")
    parser.add_argument("--index", default=None, metavar="INDEX_DIR",
                        help="a prebuilt index of --corpus (python -m samtone_tf.index build): its embeddings and, "
                             "for a ScaNN index, the index itself are used instead of encoding the corpus again "
                             "(default: none)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version (default: off)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="corpus encoding batch (default: 64)")
    add_compute_dtype(parser)
    add_verbose(parser)
    return parser


def run_check(out):
    results = check_export(out)
    for name, path, problem in results:
        print(f"{name:<17} {'OK' if problem is None else 'FAILED: ' + problem}   ({path})")
    failed = sum(problem is not None for _, _, problem in results)
    print(f"{len(results) - failed} of {len(results)} models load and serve as under TensorFlow Serving")
    return 1 if failed else 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_native_logs(args.verbose)
    if args.check is None and not ((args.model_dir or args.model) and args.out):
        parser.error("pass --model_dir (or --model) and --out to export, or --check EXPORT_DIR")
    codes = None
    if args.dims or args.precision != "float32" or args.rescore:
        if not args.corpus or args.retriever != "exact":
            parser.error("--dims, --precision and --rescore shape the exact retriever of a --corpus")
        codes = {"dims": args.dims, "precision": args.precision, "rescore": args.rescore}
    if args.format == "sentence-transformers":
        given = [f"--{name}" for name in ("corpus", "index", "version", "target_recall") if getattr(args, name)]
        given += ["--retriever"] if args.retriever != "exact" else []
        if given:
            parser.error(f"{', '.join(given)}: for TF Serving exports, not --format sentence-transformers")
    if args.model_dir and (args.query_max_length or args.document_max_length):
        parser.error("--query_max_length and --document_max_length are for --model CHECKPOINT: a trained model "
                     "keeps the lengths it was trained at")
    try:
        if args.check is not None:
            return run_check(args.check)
        from samtone_tf.models import load_dual_encoder, with_compute_dtype

        model, model_dir = load_dual_encoder(args.model_dir or args.model, args.query_max_length,
                                             args.document_max_length)
        model = with_compute_dtype(model, args.compute_dtype)
        if args.format == "sentence-transformers":
            written = export_sentence_transformers(model, model_dir, args.model_dir or args.model, args.out,
                                                   args.overwrite)
            print(f"wrote a sentence-transformers model to {args.out} ({written}); load it with "
                  f"SentenceTransformer({str(args.out)!r})")
            return 0
        corpus = None
        if args.corpus:
            from samtone_tf.data.datasets import load_evaluation

            corpus = load_evaluation(args.corpus, args.corpus_split, args.data_dir)
        corpus_embeddings = prebuilt = None
        if args.index:
            if corpus is None:
                parser.error("--index needs --corpus (the corpus the index holds)")
            corpus_embeddings, prebuilt = prebuilt_corpus(args.index, corpus, model)
        training_config, metrics = training_record(model_dir)
        manifest = export(model, args.out, args.version, corpus, args.k, args.overwrite, training_config,
                          metrics, args.batch_size, serving_root=args.serving_root,
                          target_recall=args.target_recall, retriever=args.retriever,
                          corpus_embeddings=corpus_embeddings, prebuilt_index=prebuilt,
                          source=model_source(args.model_dir or args.model, model_dir), codes=codes)
    except (*command_errors(), RunLockedError) as error:
        return fail(error)
    print(f"exported version {manifest['version']} of {', '.join(manifest['models'])} to {args.out}")
    return 0


def prebuilt_corpus(index_dir, corpus, model):
    """((doc_ids, embeddings), ScannIndex or None) of a prebuilt index, checked to hold `model`'s embeddings of
    `corpus`. An exact index holds its embeddings; a ScaNN index built from shards names them in its manifest."""
    import numpy as np

    from samtone_tf.embedding_shards import load_embeddings
    from samtone_tf.index.search import ExactIndex, load_index
    from samtone_tf.retrieval import check_prebuilt_index

    index = load_index(index_dir)
    check_prebuilt_index(index, corpus, model, index_dir)
    if isinstance(index, ExactIndex):
        return (list(index.doc_ids), np.asarray(index.embeddings, np.float32)), None
    manifest = json.loads((Path(index_dir) / "manifest.json").read_text())
    source = (manifest.get("source") or {}).get("embeddings")
    if not source:
        raise ValueError(f"{index_dir}: a ScaNN index without the embeddings it was built from (its manifest names "
                         "no source); build it with python -m samtone_tf.index build, or pass an exact index")
    doc_ids, embeddings = load_embeddings(source)
    if doc_ids != [str(d) for d in index.doc_ids]:
        raise ValueError(f"{index_dir}: its documents are not those of {source}, the embeddings it names")
    return (doc_ids, embeddings), index


def export_sentence_transformers(model, model_dir, given, out, overwrite):
    """`model` written as a sentence-transformers directory at `out`, whole or absent (staged beside it, then
    renamed), carrying our marker: a directory that is not ours is never replaced. -> a description of it."""
    from samtone_tf.atomic import atomic_directory
    from samtone_tf.model.sentence_transformers_format import model_card, write_sentence_transformers
    from samtone_tf.ownership import check_ours, write_marker

    kind = "sentence-transformers model"
    out = Path(out)
    if check_ours(out, kind) is None and out.is_dir():
        out.rmdir()  # new or empty: nothing to keep (check_ours refused anything else)
    training_config, metrics = training_record(model_dir)
    card = model_card(model, base_checkpoint=(training_config or {}).get("model") or str(given),
                      training_config=training_config, metrics=metrics)
    with atomic_directory(out, overwrite=overwrite) as staging:
        write_sentence_transformers(model, staging, card=card)
        write_marker(staging, kind)
    routes = "a query and a document route" if (out / "router_config.json").is_file() else "one pipeline for both"
    return f"{model.architecture}: {routes}"


def model_source(given, model_dir):
    """What the manifest records of the exported model's origin: the path (absolute) or checkpoint name given."""
    import os

    kind = "training model_dir" if model_dir else ".keras file" if str(given).endswith(".keras") else \
        "pretrained checkpoint (untrained SDE)"
    return {"kind": kind, "model": os.path.abspath(given) if os.path.exists(given) else str(given)}


def training_record(model_dir):
    """(the run's config.json, its last evaluation) of a training `model_dir`; (None, None) for a model without one
    (a .keras file, a pretrained checkpoint)."""
    if not model_dir:
        return None, None
    config_path = Path(model_dir) / "config.json"
    return (json.loads(config_path.read_text()) if config_path.is_file() else None), last_evaluation(model_dir)


def last_evaluation(model_dir):
    """The last evaluation the training run in `model_dir` logged, or None (read only: the run's log is its own)."""
    evaluations = [record["evaluation"] for record in
                   read_jsonl_records(Path(model_dir) / "metrics.jsonl", repair=False)
                   if isinstance(record, dict) and "evaluation" in record]
    return evaluations[-1] if evaluations else None


if __name__ == "__main__":
    sys.exit(main())
