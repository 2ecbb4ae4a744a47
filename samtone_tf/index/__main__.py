"""python -m samtone_tf.index build: an index of sharded corpus embeddings (what `python -m samtone_tf.encode`
writes), for `evaluate --index_dir` and `export --index`.

    python -m samtone_tf.index build --embeddings embeddings/scifact --out indexes/scifact --kind scann

The shards are streamed (each checked against the manifest's checksum) into one preallocated array, the memory the
index itself needs; no second copy of the corpus is made. --kind scann writes the layout `export` writes under
index/N (ScaNN's files, the document ids, a manifest, and scann_tf/, the searcher as a TF-ops SavedModel);
--kind exact writes the embeddings as a memory-mappable .npy with the ids. The index directory appears whole or not
at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from samtone_tf.cli import (HelpFormatter, add_code_options, add_verbose, command_errors, fail, positive_int,
                            quiet_native_logs)
from samtone_tf.options import INDEX_KINDS


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m samtone_tf.index", description=__doc__,
                                     formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="an index from embedding shards", formatter_class=HelpFormatter)
    build.add_argument("--embeddings", required=True, help="a directory written by python -m samtone_tf.encode")
    build.add_argument("--out", required=True, help="the index directory to write")
    build.add_argument("--kind", choices=INDEX_KINDS, default="scann",
                       help="search: exact, ScaNN, or cheaper codes searched exactly (--dims, --precision, --rescore)")
    add_code_options(build, scope="with --kind codes (--dims and --rescore also with --kind scann: the searcher on "
                                  "the prefix, its candidates re-ranked at the full dimension): ")
    build.add_argument("--k", type=positive_int, default=100,
                       help="neighbours a ScaNN search returns by default, and the k of --target_recall")
    build.add_argument("--target_recall", type=float, default=None,
                       help="build the fastest ScaNN index reaching this recall@k against exact search, measured "
                            "with a sample of the documents standing in for queries (default: ScaNN's defaults)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index directory")
    add_verbose(build)
    return parser


def build_index(embeddings_dir, out, kind="scann", k=100, overwrite=False, target_recall=None, say=print, codes=None):
    """Builds and writes the index; returns its manifest (with the source embeddings and the build seconds).
    With `target_recall` (ScaNN only) the index is `index.tuning.tune_scann`'s choice at recall@k. Kind "codes": a
    `QuantizedIndex` with `codes` ({"dims", "precision", "rescore"})."""
    from samtone_tf.atomic import atomic_directory
    from samtone_tf.embedding_shards import load_embeddings, read_manifest
    from samtone_tf.index.search import ExactIndex
    from samtone_tf.ownership import check_ours, refuse_input_as_output, write_marker

    if target_recall is not None and (kind != "scann" or not 0.0 < target_recall <= 1.0):
        raise ValueError(f"--target_recall {target_recall}: for --kind scann, a value in (0, 1]")
    start = time.perf_counter()
    refuse_input_as_output(out, {"--embeddings": embeddings_dir})
    source = read_manifest(embeddings_dir)
    check_ours(out, "index", recognise=_index_of_an_earlier_version)
    if os.path.isdir(out) and not os.listdir(out):
        os.rmdir(out)  # an empty directory: written as if new (the index appears whole by a rename)
    with atomic_directory(out, overwrite=overwrite) as staging:
        write_marker(staging, "index")
        doc_ids, embeddings, corpus_fingerprint = load_embeddings(embeddings_dir, with_corpus_fingerprint=True)
        if kind == "exact":
            ExactIndex(embeddings, doc_ids).write_files(staging)
        elif kind == "codes":
            from samtone_tf.index.quantized import QuantizedIndex

            codes = codes or {}
            QuantizedIndex(embeddings, doc_ids, codes.get("dims"), codes.get("precision", "float32"),
                           codes.get("rescore")).write_files(staging)
        elif (codes or {}).get("dims"):
            from samtone_tf.index.search import ScannIndex

            # A prefix searcher: no TF-ops copy (index/N/scann_tf of an export holds full-dimension searchers).
            ScannIndex(embeddings, doc_ids, k=k, dims=codes["dims"], rescore=codes.get("rescore")).write_files(staging)
        else:
            from samtone_tf.serving import save_index

            tuned = None
            if target_recall is not None:
                from samtone_tf.index.tuning import tune_scann, tuning_queries

                queries, excluded = tuning_queries(None, embeddings)
                tuned = tune_scann(embeddings, doc_ids, queries, target_recall, k=k, excluded_rows=excluded, say=say)
            save_index(embeddings, doc_ids, k, staging, index=tuned)
        manifest = json.loads((staging / "manifest.json").read_text())
        manifest["source"] = {"embeddings": str(embeddings_dir) if "://" in str(embeddings_dir) else
                              os.path.abspath(embeddings_dir), "model": source["model"],
                              "corpus": source.get("corpus")}
        # What proves which tower and which documents this index holds (`samtone_tf.provenance`).
        manifest["provenance"] = {"document_tower": (source.get("model") or {}).get("fingerprint"),
                                  "corpus": corpus_fingerprint}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    manifest["seconds"] = round(time.perf_counter() - start, 2)
    return manifest


def _index_of_an_earlier_version(directory):
    """An index written before ownership markers: its manifest names an index kind."""
    try:
        return json.loads((Path(directory) / "manifest.json").read_text()).get("kind") in ("exact", "scann", "codes")
    except (OSError, ValueError, AttributeError):
        return False


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_native_logs(args.verbose)
    try:
        if args.kind == "exact" and (args.dims or args.precision != "float32" or args.rescore):
            raise ValueError("--dims, --precision and --rescore are for --kind codes (--dims and --rescore also for "
                             "--kind scann)")
        if args.kind == "scann" and (args.precision != "float32" or (args.rescore and not args.dims)
                                     or (args.dims and args.target_recall is not None)):
            raise ValueError("with --kind scann, --dims D [--rescore K] (a searcher on the prefix, re-ranked at the "
                             "full dimension) without --precision or --target_recall; ScaNN quantizes by itself")
        manifest = build_index(args.embeddings, args.out, args.kind, args.k, args.overwrite, args.target_recall,
                               codes={"dims": args.dims, "precision": args.precision, "rescore": args.rescore})
    except command_errors() as error:
        return fail(error)
    print(f"built the {manifest['kind']} index of {manifest['size']} documents (dimension {manifest['dimension']}) "
          f"in {manifest['seconds']} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
