"""Search at growing corpus sizes: exact, ScaNN tuned to recall targets, and the partitioned TF retriever.

    python benchmarks/index_search.py --json docs/results/index_search.json [--sizes 100000 1000000]
    python benchmarks/index_search.py --json docs/results/index_search.json --sizes 2000000 --max_builds 1

The corpus is the real document embeddings of the benchmark corpora (all-MiniLM-L6-v2, length 64: the cache of
benchmarks/speed.py) extended with clustered synthetic unit vectors around them; the queries are the real
queries, split in halves as `index.tuning` splits them: one half to tune on, the other held out, and every
recall and queries/s figure below is measured on the held-out half.

Each (size, part) runs in a fresh process, so the peak resident memory reported is that part's own (corpus
included), and a part passing `--memory_limit_gb` is killed and reported as not fitting. Parts:
- `scann`: `index.tuning.tune_scann_for_targets` at each `--targets` recall@10 (one walk of the trees for all
  targets); per target the chosen settings, tuning time, held-out recall, its queries/s against exact search
  (`ExactIndex`, batched over the same queries), and the searcher's size on disk; every setting tried (`tried`:
  leaves, leaves searched, reorder depth, tuning recall and queries/s).
- `partitioned`: the partitioning and probes tuned to `--partitioned_target` (`index.tuning.tune_partitions`: √N,
  2√N and 4√N k-means partitions, each with its fewest probes, the fastest kept); the partitioned search against
  the exact retriever's search (matrix product and top-k over a variable, as the retriever SavedModel serves),
  both as `tf.function`s over requests of `--request_sizes` queries, for at most `--seconds` each.
Rows are merged into an existing --json by size (a cut run is resumed size by size). Needs the machine to itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from machine import cpu_flags, describe, measured_row  # benchmarks/machine.py, beside this script

from samtone_tf.atomic import atomic_write_text

REPOSITORY = Path(__file__).resolve().parents[1]
K = 10


def corpus_and_queries(size, cache_dir, spread):
    """Real embeddings extended to `size` rows, and the real queries."""
    import numpy as np
    from speed import extended, real_embeddings  # benchmarks/speed.py

    documents, queries = real_embeddings(SimpleNamespace(cache_dir=cache_dir, search_doc_len=64))
    return extended(documents, size, np.random.default_rng(0), spread), queries, len(documents)


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def best_rate(search, count, repeats=3):
    """Queries/s of `search()` over `count` queries: the best of `repeats` runs."""
    seconds = min(_seconds(search) for _ in range(repeats))
    return count / seconds


def _seconds(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def scann_part(size, args):
    import numpy as np

    from samtone_tf.index.search import ExactIndex
    from samtone_tf.index.tuning import held_out_split, tune_scann_for_targets

    corpus, queries, real = corpus_and_queries(size, args.cache_dir, args.spread)
    _, held = held_out_split(len(queries))
    exact = ExactIndex(corpus, np.arange(size))  # holds the corpus array itself, not a copy
    exact.search(queries[:64], K)  # warm-up
    exact_qps = best_rate(lambda: exact.search(queries[held], K), len(held), repeats=2)
    start = time.perf_counter()
    indexes = tune_scann_for_targets(corpus, np.arange(size), queries, args.targets, k=K,
                                     max_builds=args.max_builds, say=lambda *a: None)
    tuning_seconds = time.perf_counter() - start
    rows = []
    for target, index in zip(args.targets, indexes):
        report = index.settings["tuning"]
        chosen = next(t for t in report["tried"] if t["queries_per_second"] == report["queries_per_second"])
        index.search(queries[:64], K)
        qps = best_rate(lambda: index.search(queries[held], K), len(held))
        with tempfile.TemporaryDirectory() as directory:
            index.searcher.serialize(directory)
            disk_gb = sum(p.stat().st_size for p in Path(directory).iterdir()) / 2**30
        rows.append(dict(target_recall=target, reached=report["reached"], held_out_recall=report["held_out_recall"],
                         tuning_recall=report["tuning_recall"], num_leaves=index.settings["num_leaves"],
                         num_leaves_to_search=index.settings["num_leaves_to_search"],
                         reorder=index.settings["reorder"], build_seconds=chosen["build_seconds"],
                         queries_per_second=qps, speedup=qps / exact_qps, disk_gb=disk_gb))
    return dict(size=size, real=real, queries=len(queries), held_out_queries=len(held), exact_qps=exact_qps,
                tuning_seconds=tuning_seconds, trees=report["builds"], trials=len(report["tried"]),
                tuned=rows, tried=report["tried"], peak_rss_gb=peak_gb())


def partitioned_part(size, args):
    import numpy as np
    import tensorflow as tf

    from samtone_tf.index.partitioned import partitioned_top_k
    from samtone_tf.index.tuning import exact_rows, held_out_split, tune_partitions
    from samtone_tf.metrics import recall_at_k

    corpus, queries, real = corpus_and_queries(size, args.cache_dir, args.spread)
    tune, held = held_out_split(len(queries))
    truth = exact_rows(corpus, np.arange(size), queries, K, np.full(len(queries), -1))
    start = time.perf_counter()
    partitions, probes, tuning_recall, report = tune_partitions(corpus, queries[tune], truth[tune],
                                                                args.partitioned_target, k=K, say=lambda *a: None)
    tuning_seconds = time.perf_counter() - start

    # The two retrievers' searches, as their SavedModels hold and run them.
    embeddings = tf.Variable(corpus, trainable=False)
    del corpus
    sorted_embeddings = tf.Variable(partitions.embeddings, trainable=False)
    centroids = tf.Variable(partitions.centroids, trainable=False)
    offsets = tf.Variable(partitions.offsets, trainable=False)
    rows_of_sorted = partitions.rows
    partitions.embeddings = None
    gc.collect()

    @tf.function(input_signature=[tf.TensorSpec([None, queries.shape[1]], tf.float32)])
    def exact_search(batch):
        return tf.math.top_k(tf.matmul(batch, embeddings, transpose_b=True), k=K).indices

    @tf.function(input_signature=[tf.TensorSpec([None, queries.shape[1]], tf.float32)])
    def partitioned_search(batch):
        return partitioned_top_k(batch, centroids, sorted_embeddings, offsets, probes, K)[1]

    held_queries = queries[held]
    found = np.concatenate([rows_of_sorted[np.maximum(partitioned_search(held_queries[i : i + 64]).numpy(), 0)]
                            for i in range(0, len(held), 64)])
    held_out_recall = recall_at_k(found, truth[held])
    rates = []
    for request in args.request_sizes:
        row = {"request_queries": request}
        for name, search in (("exact", exact_search), ("partitioned", partitioned_search)):
            search(held_queries[:request])  # trace and warm
            done, start = 0, time.perf_counter()
            while done + request <= len(held_queries) and time.perf_counter() - start < args.seconds:
                search(held_queries[done : done + request]).numpy()
                done += request
            row[f"{name}_qps"] = done / (time.perf_counter() - start)
        row["speedup"] = row["partitioned_qps"] / row["exact_qps"]
        rates.append(row)
    return dict(size=size, real=real, queries=len(queries), held_out_queries=len(held),
                partitions=partitions.count, probes=probes, target_recall=args.partitioned_target,
                tuning_recall=tuning_recall, held_out_recall=held_out_recall, build_seconds=report["build_seconds"],
                tuning_seconds=tuning_seconds, tried=report["tried"], rates=rates, peak_rss_gb=peak_gb())


PARTS = {"scann": scann_part, "partitioned": partitioned_part}


def measure(size, part, argv, limit_gb):
    """One (size, part) in a fresh process. -> its row, or {"fits": False, "error": ...}."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(size), part, *argv]
    return measured_row(command, limit_gb, cwd=REPOSITORY)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="docs/results/index_search.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.95, 0.99])
    parser.add_argument("--partitioned_target", type=float, default=0.95)
    parser.add_argument("--max_builds", type=int, default=3, help="ScaNN trees tuning may build per size")
    parser.add_argument("--request_sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=10.0, help="time spent per retriever and request size")
    parser.add_argument("--spread", type=float, default=0.03, help="of the synthetic vectors around real ones")
    parser.add_argument("--cache_dir", default=str(Path(tempfile.gettempdir()) / "samtone_speed_cache"))
    parser.add_argument("--memory_limit_gb", type=float, default=22.0)
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        size, part = int(args.worker[0]), args.worker[1]
        print(json.dumps(PARTS[part](size, args)), flush=True)
        return 0

    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    if results.get("cpu_flags") not in (None, cpu_flags()):
        raise SystemExit(f"{path} was measured on another CPU ({results['cpu_flags']}): write elsewhere")
    results.update(machine=describe(), cpu_flags=cpu_flags(), k=K)
    for size in args.sizes:
        for part in args.parts:
            row = dict(measure(size, part, argv, args.memory_limit_gb), size=size,
                       command=" ".join(["python benchmarks/index_search.py", *argv]))
            results[part] = [r for r in results.get(part, []) if r["size"] != size] + [row]
            results[part].sort(key=lambda r: r["size"])
            print(json.dumps({part: row}), flush=True)
            atomic_write_text(path, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
