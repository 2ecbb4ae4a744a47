"""The Markdown tables of every results file in docs/results/: the one renderer the benchmark scripts print
with, and the test (tests/test_results_doc.py) checks RESULTS.md against, so a table cannot silently vanish.

    python benchmarks/tables.py docs/results/speed.json [...]
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def loss_overhead(results):
    lines = ["| global batch | same_tower | bidirectional | ms | × none |", "|---:|---|---|---:|---:|"]
    for row in results["rows"]:
        lines.append(f"| {row['batch']} | {row['same_tower']} | {row['bidirectional']} | {row['ms']:.2f} | "
                     f"{row['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def symmetric_product(results):
    ms = results["ms"]
    projected = ms["same_tower"] - ms["product"] + ms["syrk"] + ms["whole"]
    lines = [f"| operation (B = {results['batch']}, D = {results['dim']}) | ms | × standard loss |", "|---|---:|---:|",
             f"| standard loss, forward + backward | {ms['standard']:.2f} | 1.00 |",
             f"| query-side SamToNe, forward + backward | {ms['same_tower']:.2f} | "
             f"{ms['same_tower'] / ms['standard']:.2f} |",
             f"| q·qᵀ: TensorFlow's product | {ms['product']:.2f} | |",
             f"| q·qᵀ: BLAS SYRK, one triangle ({results['blas']}) | {ms['syrk']:.2f} | |",
             f"| the triangle made whole (TensorFlow) | {ms['whole']:.2f} | |",
             f"| query-side SamToNe with the SYRK (projected) | {projected:.2f} | {projected / ms['standard']:.2f} |"]
    return "\n".join(lines) + "\n"


def bf16_encoding(results):
    lines = [f"| encoding ({results['documents']} SciFact documents, length {results['length']}) | documents/s (runs) | "
             "× the first | min cosine to it | SciFact nDCG@10 |", "|---|---|---:|---:|---:|"]
    for row in results["rows"]:
        rates = ", ".join(f"{r:.1f}" for r in row["documents_per_second"])
        ndcg = f"{row['nDCG@10']:.4f}" if "nDCG@10" in row else ""
        lines.append(f"| {row['mode']} | {rates} | {row['ratio']:.2f} | {row['min_cosine_to_float32']:.5f} | {ndcg} |")
    return "\n".join(lines) + "\n"


def encode_speed(results):
    lines = ["| encoder | documents/s | × sentence-transformers | min cosine to peer |", "|---|---:|---:|---:|"]
    for row in results["rows"]:
        lines.append(f"| {row['encoder']} | {row['documents_per_second']:.1f} | {row['ratio']:.2f} | "
                     f"{row['min_cosine_to_peer']:.6f} |")
    return "\n".join(lines) + "\n"


def speed(results):
    lines = []
    if "training" in results:
        t = results["training"]
        lines += ["| trainer | pairs/s | × peer |", "|---|---:|---:|"]
        for name, rate in t["pairs_per_second"].items():
            lines.append(f"| {name} | {rate:.1f} | {rate / t['pairs_per_second']['sentence-transformers']:.2f} |")
        lines.append("")
    if "parity" in results:
        lines += ["| batch | temperature | ours | sentence-transformers directions | theirs | |difference| |",
                  "|---:|---:|---|---|---:|---:|"]
        for r in results["parity"]["rows"]:
            lines.append(f"| {r['batch']} | {r['temperature']} | same_tower={r['same_tower']} | "
                         f"{', '.join(r['directions'])} | {r['theirs']:.6f} | {r['difference']:.1e} |")
        lines.append("")
    if "matryoshka_parity" in results:
        lines += ["| batch | temperature | Matryoshka dims (weights) | ours | sentence-transformers MatryoshkaLoss | "
                  "|difference| |", "|---:|---:|---|---:|---:|---:|"]
        for r in results["matryoshka_parity"]["rows"]:
            lines.append(f"| {r['batch']} | {r['temperature']} | {', '.join(map(str, r['dims']))} "
                         f"({', '.join(map(str, r['weights']))}) | {r['ours']:.6f} | {r['theirs']:.6f} | "
                         f"{r['difference']:.1e} |")
        lines.append("")
    if "search" in results:
        lines += ["| corpus vectors | exact q/s | ScaNN leaves searched | ScaNN q/s | speed-up | recall@10 | build s |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results["search"]["rows"]:
            mark = " (default)" if r["default"] else ""
            lines.append(f"| {r['size']:,} | {r['exact_qps']:.0f} | {r['leaves_searched']}/{r['leaves']}{mark} | "
                         f"{r['scann_qps']:.0f} | {r['speedup']:.1f}× | {r['recall_at_10']:.3f} | "
                         f"{r['build_seconds']:.0f} |")
        lines.append("")
    if "encoding" in results:
        e = results["encoding"]
        rates = e["documents_per_second"]
        lines += ["| encoder | sequence length | documents/s | × in-process |", "|---|---:|---:|---:|"]
        for name, rate in rates.items():
            lines.append(f"| {name} | {e['seq_len']} | {rate:.1f} | "
                         f"{rate / rates['in-process (tf.function)']:.3f} |")
        lines.append("")
    return "\n".join(lines)


ANALYSIS_HEADER = ("| model | mean q·q | mean q·d | q·q / q·d | mean top-1 q→d | mean top-1 q→q | "
                   "cosine of the towers' centroids |\n|---|---:|---:|---:|---:|---:|---:|\n")


def analysis(results):
    r = results
    return ANALYSIS_HEADER + (
        f"| {Path(r['model']).stem} ({r['dataset']} {r['split']}) | {r['mean_query_query_similarity']:.3f} | "
        f"{r['mean_query_document_similarity']:.3f} | {r['query_query_to_query_document_ratio']:.2f} | "
        f"{r['mean_top1_query_document_similarity']:.3f} | {r['mean_top1_query_query_similarity']:.3f} | "
        f"{r['centroid_cosine']:.3f} |\n")


def interop(results):
    lines = ["| architecture | routes | texts | query: 1 − min cosine | document: 1 − min cosine | max abs difference |",
             "|---|---|---:|---:|---:|---:|"]
    for row in results["round_trip"]:
        lines.append(f"| {row['architecture']} | {row['routes']} | {row['texts']} | {1 - row['query_min_cosine']:.1e} | "
                     f"{1 - row['document_min_cosine']:.1e} | "
                     f"{max(row['query_max_abs_difference'], row['document_max_abs_difference']):.1e} |")
    table = "\n".join(lines) + "\n"
    if results.get("zero_shot"):
        rows = ["| zero-shot all-MiniLM-L6-v2, BEIR SciFact test | nDCG@10 | P@1 | seconds |", "|---|---:|---:|---:|"]
        for row in results["zero_shot"]["rows"]:
            rows.append(f"| {row['path']} | {row['nDCG@10']!r} | {row['P@1']!r} | {row['seconds']:.0f} |")
        table += "\n" + "\n".join(rows) + "\n"
    return table


def length_groups(results):
    lines = ["| setting | s/step | token positions per step | × padded batch time |", "|---|---:|---:|---:|"]
    base = results["rows"][0]["seconds_per_step"]
    for row in results["rows"]:
        lines.append(f"| {row['setting']} | {row['seconds_per_step']:.2f} | {row['positions_per_step']:,.0f} | "
                     f"{row['seconds_per_step'] / base:.2f} |")
    return "\n".join(lines) + "\n"


def _benchmark(name):
    """The benchmark script `name` beside this one, imported (its own report renders its results)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return importlib.import_module(name)


def batch_size(results):
    return _benchmark("batch_size").report(results)


def matryoshka(results):
    return _benchmark("matryoshka").report(results)


def codes_at_scale(results):
    return _benchmark("codes_at_scale").render(results)


def quality(results):
    benchmark = _benchmark("quality")
    return benchmark.report(benchmark.expanded(results), None)


def mining(results):
    """In-batch negatives only against mined hard negatives, per task: mean ± standard deviation over seeds."""
    import statistics

    lines = ["| task | metric | zero-shot | in-batch only | mined hard negatives | difference | seeds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for task, metric in (("scifact", "nDCG@10"), ("squad", "P@1")):
        runs = results.get(task, {})
        values = {c: [v[metric] for k, v in runs.items() if k.startswith(f"{c}|")] for c in ("in-batch", "mined")}
        if not values["in-batch"] or not values["mined"]:
            continue

        def cell(xs):
            return f"{statistics.fmean(xs):.4f}" + (f" ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else "")

        zero = runs.get("zero-shot", {}).get(metric)
        lines.append(f"| {task} | {metric} | {zero:.4f} | {cell(values['in-batch'])} | {cell(values['mined'])} | "
                     f"{statistics.fmean(values['mined']) - statistics.fmean(values['in-batch']):+.4f} | "
                     f"{min(len(values['in-batch']), len(values['mined']))} |")
    return "\n".join(lines) + "\n"


def gradient_cache(results):
    """Peak memory and step time, cached against uncached, per global batch."""
    def cell(m, key, fmt):
        return format(m[key], fmt) if m.get("fits") else "does not fit"

    one = results["one_chunk_uncached"]
    lines = ["| global batch | uncached s/step | uncached peak GB | cached s/step | cached peak GB | cached / uncached time | "
             "cached peak / one chunk's |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        u, c = row["uncached"], row["cached"]
        ratio = f"{c['seconds'] / u['seconds']:.2f}" if u.get("fits") and c.get("fits") else "–"
        peak = f"{c['peak_rss_gb'] / one['peak_rss_gb']:.2f}" if c.get("fits") and one.get("fits") else "–"
        lines.append(f"| {row['batch']} | {cell(u, 'seconds', '.2f')} | {cell(u, 'peak_rss_gb', '.1f')} | "
                     f"{cell(c, 'seconds', '.2f')} | {cell(c, 'peak_rss_gb', '.1f')} | {ratio} | {peak} |")
    return "\n".join(lines) + "\n"


def beam_encoding(results):
    """Documents/s of the Beam pipeline against in-process encoding; index builds from shards against an array."""
    lines = []
    if "encoding" in results:
        rows = results["encoding"]["rows"]
        base = rows[0]["documents_per_second"]
        lines += ["| encoding | seconds | documents/s | × in-process | max abs difference |", "|---|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['setting']} | {r['seconds']:.1f} | {r['documents_per_second']:.1f} | "
                         f"{r['documents_per_second'] / base:.2f} | {r['max_abs_difference']:.1e} |")
        lines.append("")
    if "index" in results:
        lines += ["| index | built from | seconds | peak resident GiB |", "|---|---|---:|---:|"]
        for r in results["index"]["rows"]:
            lines.append(f"| {r['kind']} | {r['source']} | {r['seconds']:.1f} | {r['peak_gb']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def index_search(results):
    """Tuned ScaNN and the partitioned TF retriever against exact search, per corpus size."""
    lines = []
    if results.get("scann"):
        lines += ["| corpus | target recall@10 | held-out recall@10 | leaves searched / leaves | reorder | "
                  "queries/s | exact queries/s | × exact | tree build s | tuning s | searcher GiB | peak GiB |",
                  "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in results["scann"]:
            if not row.get("fits"):
                lines.append(f"| {row['size']:,} | – | does not fit: {row['error']} |" + " – |" * 9)
                continue
            for t in row["tuned"]:
                lines.append(f"| {row['size']:,} | {t['target_recall']:.2f} | {t['held_out_recall']:.3f} | "
                             f"{t['num_leaves_to_search']} / {t['num_leaves']} | {t['reorder']} | "
                             f"{t['queries_per_second']:.0f} | {row['exact_qps']:.0f} | {t['speedup']:.1f} | "
                             f"{t['build_seconds']:.0f} | {row['tuning_seconds']:.0f} | {t['disk_gb']:.2f} | "
                             f"{row['peak_rss_gb']:.1f} |")
        lines.append("")
    if results.get("partitioned"):
        lines += ["| corpus | partitions | probes | held-out recall@10 | queries per request | partitioned q/s | "
                  "exact retriever q/s | × exact | k-means s | tuning s | peak GiB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in results["partitioned"]:
            if not row.get("fits"):
                lines.append(f"| {row['size']:,} | does not fit: {row['error']} |" + " – |" * 9)
                continue
            for r in row["rates"]:
                lines.append(f"| {row['size']:,} | {row['partitions']} | {row['probes']} | "
                             f"{row['held_out_recall']:.3f} | {r['request_queries']} | {r['partitioned_qps']:.0f} | "
                             f"{r['exact_qps']:.1f} | {r['speedup']:.1f} | {row['build_seconds']:.0f} | "
                             f"{row['tuning_seconds']:.0f} | {row['peak_rss_gb']:.1f} |")
        lines.append("")
        tried = [(row, t) for row in results["partitioned"] if row.get("fits") for t in row.get("tried", [])]
        if tried:
            lines += ["| corpus | partitions tried | probes | tuning recall@10 | tuning q/s (requests of 64) | "
                      "k-means s | kept |", "|---:|---:|---:|---:|---:|---:|---|"]
            lines += [f"| {row['size']:,} | {t['partitions']} | {t['probes']} | {t['recall']:.3f} | "
                      f"{t['queries_per_second']:.0f} | {t['build_seconds']:.0f} | "
                      f"{'yes' if t['partitions'] == row['partitions'] else ''} |" for row, t in tried]
            lines.append("")
    return "\n".join(lines)


RENDERERS = {  # results file kind (its name up to the first "-") -> renderer
    "analysis": analysis, "batch_size": batch_size, "beam_encoding": beam_encoding, "bf16_encoding": bf16_encoding,
    "codes_at_scale": codes_at_scale, "encode_speed": encode_speed, "gradient_cache": gradient_cache,
    "index_search": index_search, "interop": interop, "length_groups": length_groups,
    "loss_overhead": loss_overhead, "matryoshka": matryoshka, "mining": mining, "quality": quality, "speed": speed,
    "symmetric_product": symmetric_product,
}


def render(path):
    """The tables of the results file at `path` (Markdown). Raises KeyError for a file without a renderer."""
    path = Path(path)
    kind = path.stem.split("-", 1)[0]
    if kind not in RENDERERS:
        raise KeyError(f"{path}: no table renderer for results of kind {kind!r} (add one to benchmarks/tables.py)")
    return RENDERERS[kind](json.loads(path.read_text()))


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(render(name))
