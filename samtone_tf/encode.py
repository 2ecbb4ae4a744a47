"""python -m samtone_tf.encode: a corpus's document embeddings, computed by an Apache Beam pipeline.

    python -m samtone_tf.encode --model exports/scifact --corpus beir:scifact --out embeddings/scifact \\
        --runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing

--model is an export directory (its document encoder, the version its manifest commits) or anything
`evaluate` takes (the document encoder is then saved first as a SavedModel in OUT/document_encoder, which the
workers load). --corpus is a dataset name (beir:NAME, msmarco:DIR, reqa:squad, multireqa:squad, wikiqa) or a path:
a BEIR directory, an MS MARCO directory (collection.tsv), or corpus files (patterns allowed) in BEIR JSONL or
id<TAB>text. BEIR and MS MARCO corpora are read in parallel by byte ranges; the others, which are single JSON or
TSV files of a few thousand sentences, are read here and handed to the pipeline.

Every other option is a Beam pipeline option (--runner, --direct_num_workers, --direct_running_mode, and
Dataflow's --project, --region, --temp_location, --requirements_file, ...). Without --runner (or with
DirectRunner) the pipeline runs on Beam's in-process FnApiRunner, named explicitly: Beam's DirectRunner would first
try its Prism runner, which downloads a binary. OUT gets sharded TFRecords of
(id, embedding), the documents that could not be read in dead_letters-*.jsonl (file, line, reason), and
manifest.json, written last: a directory without it holds a failed or unfinished run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import samtone_tf  # noqa: F401,I001  (first: it sets TensorFlow's environment before TensorFlow loads)

from samtone_tf.cli import HelpFormatter, add_verbose, fail, positive_int, quiet_native_logs

LINE_FORMAT_BY_SUFFIX = {".jsonl": "beir", ".tsv": "id_text"}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m samtone_tf.encode", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="export directory, model_dir, .keras file or checkpoint")
    parser.add_argument("--corpus", required=True, help="dataset name or corpus path (see above)")
    parser.add_argument("--out", required=True, help="the output directory (local or a bucket path)")
    parser.add_argument("--corpus_format", choices=("beir", "id_text"), default=None,
                        help="line format of corpus files (default: from the file name: .jsonl BEIR, .tsv id<TAB>text)")
    parser.add_argument("--corpus_split", default=None, help="split of a dataset whose corpus depends on it")
    parser.add_argument("--data_dir", default=None, help="default: $SAMTONE_DATA, then ../shared/data")
    parser.add_argument("--version", type=positive_int, default=None, help="export version (default: the manifest's)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="documents per encoder call")
    parser.add_argument("--num_shards", type=int, default=0, help="embedding shards (0: the runner chooses)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's output in --out")
    add_verbose(parser)
    return parser


def document_encoder_path(model, out, version=None):
    """(SavedModel directory of the document encoder, description for the manifest)."""
    import tensorflow as tf

    from samtone_tf.serving import ENCODERS, MANIFEST, export_version, save_encoder

    model = str(model)
    in_a_bucket = "://" in model  # gs://..., read through tf.io.gfile
    if in_a_bucket or tf.io.gfile.exists(tf.io.gfile.join(model, MANIFEST)):
        # An export: its manifest names the version.
        model = model if in_a_bucket else os.path.abspath(model)
        version, _ = export_version(model, version)
        path = tf.io.gfile.join(model, ENCODERS[1], str(version))
        if not tf.io.gfile.exists(tf.io.gfile.join(path, "saved_model.pb")):
            raise FileNotFoundError(f"{path}: the manifest names it but it holds no saved_model.pb")
        return path, {"path": model, "version": version, "saved_model": path}
    from samtone_tf.models import load_encoder

    dual_encoder = load_encoder(model)
    path = Path(os.path.abspath(out)) / "document_encoder"
    save_encoder(dual_encoder.document_tower, path)
    described = os.path.abspath(model) if os.path.exists(model) else model  # else a checkpoint's name
    return str(path), {"path": described, "version": None, "saved_model": str(path)}


def corpus_source(corpus, corpus_format=None, split=None, data_dir=None):
    """{"line_files": [...], "line_format": ...} for a line-format corpus, else {"documents": [(id, text)]}."""
    from samtone_tf.data.datasets import KINDS, beir_directory, load_evaluation, parse_name
    from samtone_tf.locations import data_dir as find_data_dir

    kind = corpus.partition(":")[0]
    if kind in KINDS:
        kind, argument = parse_name(corpus)
        root = Path(find_data_dir(data_dir))
        if kind == "beir":
            return {"line_files": [str(beir_directory(argument, root) / "corpus.jsonl")], "line_format": "beir"}
        if kind == "msmarco":
            path = Path(argument) if Path(argument).exists() else root / argument
            return {"line_files": [str(path / "collection.tsv")], "line_format": "id_text"}
        if kind == "flagembedding":
            raise ValueError(f"{corpus}: FlagEmbedding files are training data, not a corpus")
        data = load_evaluation(corpus, split, data_dir)
        return {"documents": [(doc_id, data.document_text(doc_id)) for doc_id in data.corpus]}
    path = Path(corpus)
    for name, line_format in (("corpus.jsonl", "beir"), ("collection.tsv", "id_text")):
        if (path / name).is_file():
            return {"line_files": [str(path / name)], "line_format": corpus_format or line_format}
    if path.is_dir():
        raise ValueError(f"{path}: neither corpus.jsonl (BEIR) nor collection.tsv (MS MARCO) in this directory")
    suffix = Path(corpus.removesuffix(".gz")).suffix
    line_format = corpus_format or LINE_FORMAT_BY_SUFFIX.get(suffix)
    if line_format is None:
        raise ValueError(f"{corpus}: pass --corpus_format (the name does not end in .jsonl or .tsv)")
    return {"line_files": [corpus], "line_format": line_format}


def prepare_out(out, overwrite):
    """Refuses a non-empty OUT unless `overwrite`; with it, removes the old manifest first (so a failed run leaves
    none) and then the rest."""
    import tensorflow as tf

    from samtone_tf.embedding_shards import MANIFEST

    out = str(out)
    if tf.io.gfile.exists(out) and tf.io.gfile.listdir(out):
        if not overwrite:
            done = tf.io.gfile.exists(tf.io.gfile.join(out, MANIFEST))
            raise FileExistsError(f"{out} holds {'a finished' if done else 'an unfinished'} encoding run; "
                                  "pass --overwrite to replace it")
        if tf.io.gfile.exists(tf.io.gfile.join(out, MANIFEST)):
            tf.io.gfile.remove(tf.io.gfile.join(out, MANIFEST))
        tf.io.gfile.rmtree(out)
    tf.io.gfile.makedirs(out)


def run(args, pipeline_args):
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer's ops)
    from apache_beam.options.pipeline_options import PipelineOptions

    from samtone_tf.beam_encoding import encode_corpus
    from samtone_tf.embedding_shards import write_manifest

    source = corpus_source(args.corpus, args.corpus_format, args.corpus_split, args.data_dir)
    prepare_out(args.out, args.overwrite)
    saved_model, model_info = document_encoder_path(args.model, args.out, args.version)
    try:
        signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    except Exception as error:  # noqa: BLE001  (a damaged SavedModel fails in many ways: name the model once)
        raise ValueError(f"{saved_model}: the document encoder cannot be loaded "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    dimension = int(signature.structured_outputs["embedding"].shape[-1])
    options = PipelineOptions(with_explicit_runner(pipeline_args), save_main_session=False)
    with beam.Pipeline(options=options) as pipeline:
        encode_corpus(pipeline, args.out, saved_model, batch_size=args.batch_size, num_shards=args.num_shards,
                      **source)
    return write_manifest(args.out, model_info, dimension,
                          extra={"corpus": args.corpus, "line_format": source.get("line_format")})


# Beam's DirectRunner (2.77) first tries its Prism runner, which downloads a binary on a machine with internet and
# falls back when it cannot: the local runner is named instead. FnApiRunner is the in-process portable runner
# DirectRunner falls back to; it honours --direct_num_workers and --direct_running_mode.
LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
_LOCAL_RUNNER_NAMES = ("directrunner", "direct", "switchingdirectrunner", "fnapirunner")


def with_explicit_runner(pipeline_args):
    """`pipeline_args` with the runner named: none, or DirectRunner, is `LOCAL_RUNNER`; any other (Dataflow, Flink,
    Spark, Prism, ...) is kept as given."""
    args, runner, skip = [], None, False
    for position, arg in enumerate(pipeline_args):
        if skip:
            skip = False
            continue
        if arg == "--runner" and position + 1 < len(pipeline_args):
            runner, skip = pipeline_args[position + 1], True
            continue
        if arg.startswith("--runner="):
            runner = arg.partition("=")[2]
            continue
        args.append(arg)
    if runner is None or runner.lower() in _LOCAL_RUNNER_NAMES:
        runner = LOCAL_RUNNER
    return [*args, f"--runner={runner}"]


# Warnings Beam logs on every start-up that concern features this command does not use.
BEAM_NOISE = ("apitools not found", "Resource module is not available")


def quiet_beam_notices():
    import logging

    class _Notices(logging.Filter):
        def filter(self, record):
            return not record.getMessage().startswith(BEAM_NOISE)

    logging.getLogger().addFilter(_Notices())


def main(argv=None):
    parser = build_parser()
    args, pipeline_args = parser.parse_known_args(argv)
    quiet_native_logs(args.verbose)
    if not args.verbose:
        quiet_beam_notices()
    import tensorflow as tf

    try:
        manifest = run(args, pipeline_args)
    except (OSError, ValueError) as error:
        return fail(error)
    except tf.errors.OpError as error:  # a damaged SavedModel, an unreadable bucket
        return fail(f"{type(error).__name__}: {error.message.splitlines()[0] if error.message else error}")
    print(f"encoded {manifest['count']} documents (dimension {manifest['dimension']}) into "
          f"{len(manifest['shards'])} shards in {args.out}")
    if manifest["dead_letters"]:
        print(f"{manifest['dead_letters']} documents could not be read: see {args.out}/dead_letters-*.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
