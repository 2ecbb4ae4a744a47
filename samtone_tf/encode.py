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
(id, embedding, digest of the document), each shard written whole with a completion record, the documents that
could not be read in dead_letters-*.jsonl (file, line, reason), and manifest.json, written last: a directory without
it holds an unfinished run, which the same command resumes (complete shards kept, only the others' documents
encoded); --overwrite starts from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

from samtone_tf.cli import (HelpFormatter, add_compute_dtype, add_verbose, command_errors, fail, positive_int,
                            quiet_native_logs)
from samtone_tf.options import CORPUS_FORMATS
from samtone_tf.ownership import MARKER

LINE_FORMAT_BY_SUFFIX = {".jsonl": "beir", ".tsv": "id_text"}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m samtone_tf.encode", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="export directory, model_dir, .keras file or checkpoint")
    parser.add_argument("--corpus", required=True, help="dataset name or corpus path (see above)")
    parser.add_argument("--out", required=True, help="the output directory (local or a bucket path)")
    parser.add_argument("--corpus_format", choices=CORPUS_FORMATS, default=None,
                        help="line format of corpus files (default: from the file name: .jsonl BEIR, .tsv id<TAB>text)")
    parser.add_argument("--corpus_split", default=None, help="split of a dataset whose corpus depends on it")
    parser.add_argument("--data_dir", default=None, help="default: $SAMTONE_DATA, then ../shared/data")
    parser.add_argument("--version", type=positive_int, default=None, help="export version (default: the manifest's)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="documents per encoder call")
    add_compute_dtype(parser)
    parser.add_argument("--num_shards", type=positive_int, default=16,
                        help="embedding shards; each is written whole, and a killed run started again with the same "
                             "command keeps the complete ones (use ~1 per 50,000 documents on a cluster)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run's output in --out (kept until the new one is complete), or "
                             "start an interrupted one from scratch")
    add_verbose(parser)
    return parser


def document_encoder_path(model, out, version=None, compute_dtype="float32"):
    """(SavedModel directory of the document encoder, description for the manifest)."""
    import tensorflow as tf

    from samtone_tf.serving import ENCODERS, MANIFEST, export_version, exported_model_path, save_encoder

    model = str(model)
    in_a_bucket = "://" in model  # gs://..., read through tf.io.gfile
    if in_a_bucket or tf.io.gfile.exists(tf.io.gfile.join(model, MANIFEST)):
        # An export: its manifest names the version.
        if compute_dtype not in (None, "float32"):
            raise ValueError("--compute_dtype applies to a Keras model (a model_dir, a .keras file, a checkpoint); "
                             "an export computes in the dtype it was exported in (export it with --compute_dtype)")
        model = model if in_a_bucket else os.path.abspath(model)
        version, _ = export_version(model, version)
        path = exported_model_path(model, ENCODERS[1], version)
        return path, {"path": model, "version": version, "saved_model": path}
    from samtone_tf.models import load_encoder, with_compute_dtype

    dual_encoder = with_compute_dtype(load_encoder(model), compute_dtype)
    path = Path(os.path.abspath(out)) / "document_encoder"
    save_encoder(dual_encoder.document_tower, path)
    described = os.path.abspath(model) if os.path.exists(model) else model  # else a checkpoint's name
    # Relative: the directory may be renamed into place (--overwrite writes aside first).
    return str(path), {"path": described, "version": None, "saved_model": "document_encoder"}


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


def prepare_out(out, overwrite, inputs=None):
    """Where this run writes: (OUT, staging, resuming). OUT must be new, empty, an interrupted run's output (which
    this run resumes: `resuming`), or (with `overwrite`) an earlier run's output, which is replaced only once the new
    run is complete: the run writes into a hidden sibling (`staging`) that `finish_out` swaps in. Never an input
    of the command (`inputs`: {flag: path}); never a directory that does not carry the embeddings marker (a
    directory of other files, a model, an export)."""
    import tensorflow as tf

    from samtone_tf.embedding_shards import MANIFEST, written_by_an_earlier_version
    from samtone_tf.ownership import claim, refuse_input_as_output

    out = str(out)
    refuse_input_as_output(out, inputs or {})
    existed = tf.io.gfile.exists(out) and bool(tf.io.gfile.listdir(out))
    claim(out, "embeddings", recognise=written_by_an_earlier_version)
    if not existed or set(tf.io.gfile.listdir(out)) <= {MARKER}:
        return out, out, False
    done = tf.io.gfile.exists(tf.io.gfile.join(out, MANIFEST))
    if not overwrite:
        if not done:
            return out, out, True  # an interrupted run: the same command resumes it
        raise FileExistsError(f"{out} holds a finished encoding run; pass --overwrite to replace it")
    if "://" in out:
        # Buckets have no directory rename: the old output goes first, as before (it carries our marker).
        tf.io.gfile.rmtree(out)
        claim(out, "embeddings")
        return out, out, False
    parent, name = os.path.split(os.path.abspath(out))
    staging = os.path.join(parent, f".{name}.incomplete-{uuid.uuid4().hex[:12]}")
    claim(staging, "embeddings")
    return out, staging, False


def finish_out(out, staging):
    """Swaps a complete run's `staging` directory in for the earlier output at `out` (then deletes the earlier)."""
    import shutil

    if staging == out:
        return
    out = os.path.abspath(out)
    replaced = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.replaced-{uuid.uuid4().hex[:12]}")
    os.rename(out, replaced)
    os.rename(staging, out)
    shutil.rmtree(replaced, ignore_errors=True)


def discard_staging(out, staging):
    """Removes a failed run's staging directory (the earlier output at `out` is untouched)."""
    import shutil

    if staging != out:
        shutil.rmtree(staging, ignore_errors=True)


def corpus_path(corpus):
    """The local file or directory `--corpus` names, if it names one (else a dataset name: None)."""
    kind = corpus.partition(":")[0]
    candidate = corpus.partition(":")[2] if kind in ("beir", "msmarco") else corpus
    return candidate if candidate and os.path.exists(candidate) else None


def run(args, pipeline_args):
    import apache_beam as beam
    import tensorflow_text  # noqa: F401  (registers the tokenizer's ops)
    from apache_beam.options.pipeline_options import PipelineOptions

    from samtone_tf.beam.pipeline import encode_corpus
    from samtone_tf.embedding_shards import write_manifest
    from samtone_tf.model.fingerprint import saved_model_fingerprint
    from samtone_tf.serving import load_saved_model

    source = corpus_source(args.corpus, args.corpus_format, args.corpus_split, args.data_dir)
    out, staging, resuming = prepare_out(args.out, args.overwrite, {"--model": args.model,
                                                                     "--corpus": corpus_path(args.corpus)})
    try:
        saved_model, model_info = document_encoder_path(args.model, staging, args.version, args.compute_dtype)
        loaded = load_saved_model(saved_model)
        signature = loaded.signatures["serving_default"]
        model_info["fingerprint"] = saved_model_fingerprint(saved_model, loaded)
        dimension = int(signature.structured_outputs["embedding"].shape[-1])
        skip = resume_or_start(staging, resuming, {
            "fingerprint": model_info["fingerprint"], "corpus": args.corpus, "corpus_split": args.corpus_split,
            "line_format": source.get("line_format"), "num_shards": args.num_shards})
        options = PipelineOptions(with_explicit_runner(pipeline_args), save_main_session=False)
        pipeline = beam.Pipeline(options=options)
        encode_corpus(pipeline, staging, saved_model, batch_size=args.batch_size, num_shards=args.num_shards,
                      skip_shards=skip, **source)
        result = pipeline.run()
        result.wait_until_finish()
        manifest = write_manifest(staging, model_info, dimension,
                                  extra={"corpus": args.corpus, "line_format": source.get("line_format"),
                                         "num_shards": args.num_shards})
        manifest["encoded_this_run"] = documents_encoded(result)
    except BaseException:
        discard_staging(out, staging)
        raise
    finish_out(out, staging)
    return manifest


def resume_or_start(directory, resuming, run):
    """The shards an interrupted run of the same command completed (kept: their documents are not encoded again),
    after checking that `run` (model fingerprint, corpus, shards) is what it was started with; a new run records
    `run`. Dead letters are written again in full (the corpus is read whole either way). -> set of shard numbers."""
    import tensorflow as tf

    from samtone_tf.embedding_shards import DEAD_LETTER_PREFIX, RUN_RECORD, complete_shards

    record = tf.io.gfile.join(str(directory), RUN_RECORD)
    if resuming:
        try:
            with tf.io.gfile.GFile(record, "r") as f:
                started = json.loads(f.read())
        except (tf.errors.OpError, ValueError):
            started = None
        if started != run:
            differences = "; ".join(f"{key} {started.get(key)!r} then, {value!r} now" for key, value in run.items()
                                    if started.get(key) != value) if isinstance(started, dict) else "no record"
            raise ValueError(f"{directory} holds an unfinished encoding run of other settings ({differences}); run "
                             "the same command to resume it, or pass --overwrite to start again")
        done = complete_shards(directory, run["num_shards"])
        for name in tf.io.gfile.listdir(str(directory)):
            if name.startswith(DEAD_LETTER_PREFIX):
                tf.io.gfile.remove(tf.io.gfile.join(str(directory), name))
        print(f"resuming the unfinished run in {directory}: {len(done)} of {run['num_shards']} shards are complete "
              "and kept; encoding the documents of the others", flush=True)
        return set(done)
    with tf.io.gfile.GFile(record, "w") as f:
        f.write(json.dumps(run))
    return set()


def documents_encoded(result):
    """How many documents this run encoded (the pipeline's counter), or None where the runner does not say."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter().with_name("documents_encoded"))["counters"]
        return int(sum(c.committed or 0 for c in counters))
    except Exception:  # noqa: BLE001  (metrics are optional for a runner)
        return None


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
    try:
        manifest = run(args, pipeline_args)
    except command_errors() as error:  # TensorFlow's errors too: a damaged SavedModel, an unreadable bucket
        return fail(error)
    if manifest.get("encoded_this_run") is not None and manifest["encoded_this_run"] != manifest["count"]:
        print(f"encoded {manifest['encoded_this_run']} documents in this run; the others were in complete shards")
    print(f"encoded {manifest['count']} documents (dimension {manifest['dimension']}) into "
          f"{len(manifest['shards'])} shards in {args.out}")
    if manifest["dead_letters"]:
        print(f"{manifest['dead_letters']} documents could not be read: see {args.out}/dead_letters-*.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
