"""Codes at scale: memory, build time and queries/s of float32, int8 and binary corpus codes at 1M documents.

    python benchmarks/codes_at_scale.py --json docs/results/codes_at_scale.json [--size 1000000]

The corpus is the real document embeddings of the benchmark corpora (all-MiniLM-L6-v2, length 64: the cache of
benchmarks/speed.py) extended with clustered synthetic unit vectors around them to `--size` rows; the queries are
the real queries. For each code (`index.quantized.QuantizedIndex`: a prefix of `--dims`, float32, int8 or binary,
optionally rescoring `--rescore` candidates at float32):

- build: seconds to make the codes from the float32 embeddings (int8: calibration included), and the bytes the
  search reads (the codes; the rescoring's float32 prefix is counted apart: it may stay on disk);
- recall@10 of the code's top 10 against exact float32 search at full dimension, over `--recall_queries` queries;
- the served search: what the retriever SavedModel of `export --corpus ... --dims --precision --rescore` runs after
  encoding the query (`serving.QuantizedRetrieverModule.search`; the exact float32 retriever is
  `serving.RetrieverModule.search`, matrix product and top-k), as a `tf.function` over requests of
  `--request_sizes` queries, queries/s for about `--seconds` each, in `--rounds` rounds (every code once per round,
  in turn, so a slow spell of the machine falls on all of them);
- served end to end (`--end_to_end`): the exact and the binary + rescoring retrievers saved as SavedModels,
  loaded back with `tf.saved_model.load`, and called on query text (one query per request), the query encoder
  (all-MiniLM-L6-v2, query length 32) included.

Needs the machine to itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace

import samtone_tf.options  # noqa: F401,I001  (first: it sets TensorFlow's environment before TensorFlow loads)
import numpy as np
import tensorflow as tf
from machine import cpu_flags, describe  # benchmarks/machine.py, beside this script
from speed import extended, real_embeddings  # benchmarks/speed.py, beside this script

from samtone_tf.atomic import atomic_write_text
from samtone_tf.index.quantized import QuantizedIndex
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint
from samtone_tf.serving import QuantizedRetrieverModule, RetrieverModule

K = 10


def codes(dims_list, rescore):
    """[(dims, precision, rescore)]: exact float32 at full dimension first (the baseline), then every code."""
    full = dims_list[0]
    cells = [(full, "float32", None)]
    for dims in dims_list:
        cells += [(dims, "float32", None)] if dims != full else []
        cells += [(dims, "int8", None), (dims, "int8", rescore), (dims, "binary", None), (dims, "binary", rescore)]
    return cells


def label(dims, precision, rescore):
    return f"{dims} {precision}" + (f" + rescore {rescore}" if rescore else "")


def requests_per_second(search, queries, request_size, seconds):
    """Queries/s of `search` called on consecutive requests of `request_size` queries for about `seconds`."""
    batches = [queries[i:i + request_size] for i in range(0, len(queries) - request_size + 1, request_size)]
    search(batches[0])  # traced and warm
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in batches:
            search(batch)
            done += len(batch)
            if time.perf_counter() - start >= seconds:
                break
    return done / (time.perf_counter() - start)


def recall_at_k(found, truth):
    return float(np.mean([len(set(f[:K]) & set(t[:K])) / K for f, t in zip(found, truth)]))


def served_end_to_end(module, query_texts, seconds, directory):
    """(save seconds, bytes on disk, queries/s of the loaded SavedModel on one query text per request)."""
    start = time.perf_counter()
    tf.saved_model.save(module, directory, signatures={"serving_default": module.serve})
    saved = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(directory) for f in files)
    serve = tf.saved_model.load(directory).signatures["serving_default"]
    texts = [tf.constant([t]) for t in query_texts]
    serve(text=texts[0])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        serve(text=texts[done % len(texts)])
        done += 1
    return saved, size, done / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="docs/results/codes_at_scale.json")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 128], help="prefixes, the full dimension first")
    parser.add_argument("--rescore", type=int, default=100)
    parser.add_argument("--request_sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--recall_queries", type=int, default=200)
    parser.add_argument("--end_to_end", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "samtone_speed_cache"))
    parser.add_argument("--synthetic_spread", type=float, default=0.03)
    args = parser.parse_args(argv)

    real, queries = real_embeddings(SimpleNamespace(cache_dir=args.cache_dir, search_doc_len=64))
    corpus = extended(real, args.size, np.random.default_rng(0), args.synthetic_spread)
    doc_ids = np.arange(args.size).astype(str)
    queries = np.ascontiguousarray(queries[np.random.default_rng(1).permutation(len(queries))], np.float32)
    recall_queries = queries[:args.recall_queries]
    scores = recall_queries @ corpus.T
    nearest = np.argpartition(-scores, K, axis=1)[:, :K]
    truth = np.take_along_axis(nearest, np.argsort(-np.take_along_axis(scores, nearest, 1), axis=1), 1)
    del scores
    model = dual_encoder_from_checkpoint(architecture="sde", query_max_length=32, document_max_length=64)
    print(f"{args.size} documents of {corpus.shape[1]} dimensions; {len(queries)} queries", flush=True)

    rows, modules = [], {}
    for dims, precision, rescore in codes(args.dims, args.rescore):
        exact = (dims, precision, rescore) == (args.dims[0], "float32", None)
        start = time.perf_counter()
        index = QuantizedIndex(corpus, doc_ids, dims=dims, precision=precision, rescore=rescore)
        build = time.perf_counter() - start
        found, _ = index.search(recall_queries, K)
        row = dict(code=label(dims, precision, rescore), dims=dims, precision=precision, rescore=rescore,
                   build_seconds=round(build, 2), code_bytes=index.code_bytes,
                   rescore_bytes=int(index.prefix.nbytes) if rescore else 0,
                   recall_at_10=recall_at_k(found.astype(int), truth), rates={str(r): [] for r in args.request_sizes})
        module = (RetrieverModule(model.query_tower, corpus, doc_ids, K) if exact
                  else QuantizedRetrieverModule(model.query_tower, index, K))
        modules[row["code"]] = (module, tf.function(module.search, input_signature=[
            tf.TensorSpec([None, corpus.shape[1]], tf.float32)]))
        rows.append(row)
        print(f"{row['code']}: {row['code_bytes'] / 2**20:.0f} MiB, built in {build:.1f} s, "
              f"recall@10 {row['recall_at_10']:.3f}", flush=True)
        del index
        gc.collect()

    for round_number in range(args.rounds):
        for row in rows:
            search = modules[row["code"]][1]
            for request_size in args.request_sizes:
                rate = requests_per_second(search, queries, request_size, args.seconds)
                row["rates"][str(request_size)].append(round(rate, 1))
            print(f"round {round_number + 1}: {row['code']}: " + ", ".join(
                f"{rates[-1]:.1f} q/s at {size}" for size, rates in row["rates"].items()), flush=True)

    results = dict(machine=describe(), cpu_flags=cpu_flags(), tensorflow=tf.__version__, size=args.size,
                   dimension=int(corpus.shape[1]), synthetic_spread=args.synthetic_spread, k=K,
                   seconds=args.seconds, rows=rows)
    if args.end_to_end:
        binary = label(args.dims[0], "binary", args.rescore)
        end_to_end = []
        texts = [f"question {i} about the capital of a country" for i in range(64)]
        with tempfile.TemporaryDirectory() as scratch:
            for _ in range(args.rounds):
                for code in (rows[0]["code"], binary):
                    directory = os.path.join(scratch, "retriever")
                    saved, size, rate = served_end_to_end(modules[code][0], texts, args.seconds, directory)
                    end_to_end.append(dict(code=code, save_seconds=round(saved, 1), bytes_on_disk=size,
                                           queries_per_second=round(rate, 1)))
                    print(f"end to end: {code}: {rate:.1f} q/s (SavedModel {size / 2**30:.2f} GiB, saved in "
                          f"{saved:.0f} s)", flush=True)
                    shutil.rmtree(directory)
        results["end_to_end"] = end_to_end
    atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")
    print(render(results))
    return 0


def render(results):
    """The Markdown tables of a results file."""
    base = results["rows"][0]
    sizes = list(base["rates"])
    lines = [f"| code ({results['size']:,} documents) | search reads MiB | × less than float32 | + rescoring MiB | "
             "build s | recall@10 | " + " | ".join(f"served q/s, {s} per request (rounds)" for s in sizes) + " | "
             + " | ".join(f"× exact, {s} per request" for s in sizes) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---|" * len(sizes) + "---|" * len(sizes)]
    for row in results["rows"]:
        ratios = []
        for s in sizes:
            per_round = [mine / theirs for mine, theirs in zip(row["rates"][s], base["rates"][s])]
            ratios.append(", ".join(f"{r:.2f}" for r in per_round))
        lines.append(f"| {row['code']} | {row['code_bytes'] / 2**20:.1f} | {base['code_bytes'] / row['code_bytes']:.1f} "
                     f"| {row['rescore_bytes'] / 2**20:.0f} | {row['build_seconds']:.1f} | {row['recall_at_10']:.3f} | "
                     + " | ".join(", ".join(f"{r:.1f}" for r in row["rates"][s]) for s in sizes) + " | "
                     + " | ".join(ratios) + " |")
    if results.get("end_to_end"):
        lines += ["", "| served end to end (SavedModel loaded back, one query text per request) | queries/s | "
                  "SavedModel GiB | save s |", "|---|---:|---:|---:|"]
        for row in results["end_to_end"]:
            lines.append(f"| {row['code']} | {row['queries_per_second']:.1f} | {row['bytes_on_disk'] / 2**30:.2f} | "
                         f"{row['save_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
