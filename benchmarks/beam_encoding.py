"""Corpus encoding on Apache Beam, and indexes built from its shards (issue 14), measured alone on the machine.

    python benchmarks/beam_encoding.py --json docs/results/beam_encoding.json [--parts encoding index]

encoding: the pretrained all-MiniLM-L6-v2 (SDE) exported, then BEIR SciFact's corpus (--documents of it) encoded
  in-process (the Keras model, and the export loaded back) and by `python -m samtone_tf.encode` on DirectRunner
  with 1 worker and with 2 worker processes; documents/s over the command's whole run (start-up included) and the
  embeddings' largest difference from in-process encoding.
index: --index_size vectors (the speed benchmark's real corpus embeddings extended with clustered synthetic ones)
  written as embedding shards; `python -m samtone_tf.index build` from the shards against the same index built
  from one in-memory array (loaded from .npy), each in its own process: seconds and peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import samtone_tf.options  # noqa: E402,F401  (first: it sets TensorFlow's environment before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import machine  # noqa: E402,I001  (benchmarks/machine.py, beside this script)
from samtone_tf.atomic import atomic_write_text  # noqa: E402
from samtone_tf.data.datasets import load_evaluation  # noqa: E402
from samtone_tf.embedding_shards import example_bytes, load_embeddings, write_manifest  # noqa: E402
from samtone_tf.locations import REPOSITORY_ROOT  # noqa: E402
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint  # noqa: E402

IN_MEMORY_BUILD = """
import sys, time, numpy as np
import samtone_tf
from samtone_tf.atomic import atomic_directory
from samtone_tf.index.search import ExactIndex
from samtone_tf.serving import save_index
start = time.perf_counter()
embeddings = np.load(sys.argv[1])
doc_ids = [str(i) for i in range(len(embeddings))]
with atomic_directory(sys.argv[2]) as staging:
    if sys.argv[3] == "exact":
        ExactIndex(embeddings, doc_ids).write_files(staging)
    else:
        save_index(embeddings, doc_ids, 100, staging)
print(f"seconds {time.perf_counter() - start:.2f}")
"""


def command(*args):
    return [sys.executable, "-m", *args]


def timed(argv):
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT))
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPOSITORY_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def encoding_rates(args, work):
    from samtone_tf.serving import ExportedEncoder, export

    data = load_evaluation("beir:scifact")
    doc_ids = list(data.corpus)[: args.documents]
    corpus = work / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for doc_id in doc_ids:
            title, text = data.corpus[doc_id]
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    texts = [data.document_text(d) for d in doc_ids]
    model = dual_encoder_from_checkpoint(architecture="sde")
    export(model, work / "export", verbose=False)
    exported = ExportedEncoder(work / "export")
    rows, reference = [], None
    for name, encoder in (("in-process (Keras model)", model), ("in-process (export loaded back)", exported)):
        encode = encoder.encode_documents
        encode(texts[:64], verbose=False)  # warm-up: tracing
        start = time.perf_counter()
        embeddings = encode(texts, verbose=False)
        seconds = time.perf_counter() - start
        reference = embeddings if reference is None else reference
        rows.append(dict(setting=name, seconds=seconds, documents_per_second=len(texts) / seconds,
                         max_abs_difference=float(np.abs(embeddings - reference).max())))
        print(f"{name}: {len(texts) / seconds:.1f} documents/s", flush=True)
    for workers in (1, 2):
        out = work / f"beam-{workers}"
        options = ["--direct_num_workers", str(workers)] + (
            ["--direct_running_mode", "multi_processing"] if workers > 1 else [])
        seconds = timed(command("samtone_tf.encode", "--model", str(work / "export"), "--corpus", str(corpus),
                                "--out", str(out), *options))
        found = dict(zip(*load_embeddings(out)))
        difference = float(max(np.abs(found[d] - reference[i]).max() for i, d in enumerate(doc_ids)))
        name = f"Beam DirectRunner, {workers} worker{'s' if workers > 1 else ''}"
        rows.append(dict(setting=name, seconds=seconds, documents_per_second=len(texts) / seconds,
                         max_abs_difference=difference))
        print(f"{name}: {len(texts) / seconds:.1f} documents/s (whole command), max |diff| {difference:.1e}",
              flush=True)
    return dict(documents=len(texts), corpus="beir:scifact", model="all-MiniLM-L6-v2 (SDE)", rows=rows)


def index_builds(args, work):
    sys.path.insert(0, str(Path(__file__).parent))
    from speed import extended

    cache = Path(tempfile.gettempdir()) / "samtone_speed_cache" / "documents.npy"
    if not cache.is_file():
        raise SystemExit(f"{cache} is missing: run benchmarks/speed.py --parts search once to make it")
    real = np.load(cache)
    vectors = extended(real, args.index_size, np.random.default_rng(0), 0.03)
    np.save(work / "vectors.npy", vectors)
    shards = work / "shards"
    shards.mkdir()
    per_shard = -(-len(vectors) // args.shards)
    for shard in range(args.shards):
        with tf.io.TFRecordWriter(str(shards / f"embeddings-{shard:05d}-of-{args.shards:05d}.tfrecord")) as writer:
            for row in range(shard * per_shard, min((shard + 1) * per_shard, len(vectors))):
                writer.write(example_bytes(str(row), vectors[row]))
    write_manifest(shards, {"path": "synthetic"}, vectors.shape[1])
    size_gb = vectors.nbytes / 2**30
    del vectors
    rows = []
    for kind in args.kinds:
        for source in ("shards", "in-memory array"):
            out = work / f"index-{kind}-{source.split()[0]}"
            argv = (command("samtone_tf.index", "build", "--embeddings", str(shards), "--out", str(out), "--kind", kind)
                    if source == "shards" else
                    [sys.executable, "-c", IN_MEMORY_BUILD, str(work / "vectors.npy"), str(out), kind])
            start = time.perf_counter()
            code, _, stderr, peak, killed = machine.run_with_memory_limit(
                argv, args.memory_limit_gb, cwd=REPOSITORY_ROOT)
            seconds = time.perf_counter() - start
            if code != 0:
                raise RuntimeError(f"{' '.join(argv[:6])} failed ({'memory' if killed else code}):\n{stderr[-3000:]}")
            rows.append(dict(kind=kind, source=source, seconds=seconds, peak_gb=peak))
            print(f"index {kind} from {source}: {seconds:.1f} s, peak {peak:.2f} GiB", flush=True)
    return dict(size=args.index_size, dimension=int(real.shape[1]), real=len(real), vectors_gb=size_gb,
                shards=args.shards, rows=rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("encoding", "index"), default=["encoding", "index"])
    parser.add_argument("--documents", type=int, default=5183, help="SciFact documents to encode (all: 5183)")
    parser.add_argument("--index_size", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--kinds", nargs="+", default=["scann", "exact"])
    parser.add_argument("--memory_limit_gb", type=float, default=20.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = dict(machine=machine.describe(), cpu_flags=machine.cpu_flags(),
                   command="python benchmarks/beam_encoding.py " + " ".join(argv or sys.argv[1:]))
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        if "encoding" in args.parts:
            (work / "encoding").mkdir()
            results["encoding"] = encoding_rates(args, work / "encoding")
        if "index" in args.parts:
            (work / "index").mkdir()
            results["index"] = index_builds(args, work / "index")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
