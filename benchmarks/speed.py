"""Speed, measured side by side in one run on one machine.

    python benchmarks/speed.py --json docs/results/speed.json [--parts training parity search encoding]

Needs torch 2.13.0 and sentence-transformers besides samtone_tf (benchmark only).

training  pairs/s of one training step (forward, backward, AdamW) of samtone_tf (query-side SamToNe, SDE) in
          each of --train_settings (float32, bf16, jit, bf16+jit; "/gN" after one sets --length_groups N, 8 by
          default: e.g. bf16/g2) against sentence-transformers'
          MultipleNegativesRankingLoss(directions=("query_to_doc", "query_to_query")), same checkpoint, same
          batches, batch size and sequence length; interleaved rounds, median; with the CPU flags, the padded
          tokens per step and the GFLOP/s of a bare float32 matrix product on this machine.
parity    on identical embeddings, our query-side SamToNe equals that loss with scale = 1/temperature.
search    exact search (batched TensorFlow matrix product and top-k) against ScaNN: queries/s and
          recall@10 at 100k and 1M corpus vectors of dimension 384: real embeddings of the benchmark
          corpora and their real queries, extended with clustered synthetic vectors.
encoding  documents/s of the document tower in-process and through the exported SavedModel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import samtone_tf.options  # noqa: F401,I001  (first: it sets TensorFlow's environment before TensorFlow loads)
import numpy as np
import tensorflow as tf

import tables  # noqa: I001  (benchmarks/tables.py, beside this script)
from machine import cpu_flags
from samtone_tf.atomic import atomic_write_text
from samtone_tf.data.datasets import load_evaluation, load_training_pairs
from samtone_tf.encoding import LENGTH_BUCKET
from samtone_tf.index.search import ExactIndex, ScannIndex, scann_defaults
from samtone_tf.locations import models_dir
from samtone_tf.losses import id_fingerprints
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint
from samtone_tf.training.config import TrainConfig
from samtone_tf.training.step import compile_for_training, make_train_step, precision_policy

SETTINGS = {"float32": ("none", False), "bf16": ("bf16", False), "jit": ("none", True),
            "bf16+jit": ("bf16", True)}  # --train_settings: (mixed precision, XLA-compiled step)


def setting_options(text):
    """A --train_settings value: one of SETTINGS, optionally followed by "/gN" (N length groups; without it the
    training command's default) -> (mixed precision, XLA-compiled step, length groups)."""
    name, _, groups = text.partition("/g")
    if name not in SETTINGS or (groups and not (groups.isdigit() and int(groups) >= 1)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(SETTINGS)}, optionally with /gN "
                                         "(N >= 1 length groups)")
    return (*SETTINGS[name], int(groups) if groups else TrainConfig.length_groups)


def training_setting(text):
    """argparse's type for --train_settings: the value checked by `setting_options`, kept as its name (the
    results' key)."""
    setting_options(text)
    return text

REAL_CORPORA = ["wikiqa", "beir:scifact", "beir:cacm", "beir:cranfield", "beir:medline",
                "reqa:squad2-dev-sample/dev-v2.0-sample.json", "beir:npl"]


def training_throughput(args, results):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    checkpoint = str(models_dir() / "all-MiniLM-L6-v2")
    steps_needed = args.train_warmup + args.train_rounds * args.train_steps_per_round
    pairs = load_training_pairs("reqa:squad", max_pairs=steps_needed * args.batch_size)
    batches = [pairs[i : i + args.batch_size] for i in range(0, len(pairs), args.batch_size)]

    config = TrainConfig(batch_size=args.batch_size, same_tower="query", bidirectional=False, optimizer="adamw",
                         weight_decay=0.01, learning_rate=2e-5, warmup_steps=1, steps=10_000,
                         temperature=args.temperature)

    def trainer(setting):
        """One of our settings: a fresh model under its precision policy, its (compiled) step, and a function
        that trains on a batch of pairs, tokenising in the timed loop as the peer does."""
        precision, jit_compile, length_groups = setting_options(setting)
        warning = precision_policy(precision)
        if warning:
            print(f"  {setting}: {warning}", flush=True)
        model = dual_encoder_from_checkpoint(checkpoint, architecture="sde", query_max_length=args.seq_len,
                                             document_max_length=args.seq_len, temperature=args.temperature,
                                             length_groups=length_groups)
        precision_policy("none")
        compile_for_training(model, config)
        step = make_train_step(tf.distribute.get_strategy(), model, jit_compile=jit_compile)
        bucket = LENGTH_BUCKET if jit_compile else 1

        def run(batch):
            inputs = model.tokenize_inputs({"query": tf.constant([p.query for p in batch]),
                                            "document": tf.constant([p.document for p in batch])}, bucket)
            for key, attr in (("query_id", "query_id"), ("document_id", "document_id")):
                inputs[key] = id_fingerprints(tf.constant([getattr(p, attr) for p in batch]))
            padded_tokens.setdefault(setting, []).append(
                sum(inputs[f"{side}_token_ids"].shape.num_elements() for side in ("query", "document")))
            step(inputs)

        return run, step

    padded_tokens = {}
    runners, steps = {}, {}
    for setting in args.train_settings:
        runners[f"samtone_tf {setting}"], steps[setting] = trainer(setting)

    peer = SentenceTransformer(checkpoint, device="cpu")
    peer.max_seq_length = args.seq_len
    peer_loss = MultipleNegativesRankingLoss(peer, scale=1.0 / args.temperature,
                                             directions=("query_to_doc", "query_to_query"))
    peer_optimizer = torch.optim.AdamW(peer.parameters(), lr=2e-5, weight_decay=0.01)
    peer.train()

    def theirs(batch):
        features = [peer.tokenize([p.query for p in batch]), peer.tokenize([p.document for p in batch])]
        loss = peer_loss(features, None)
        loss.backward()
        peer_optimizer.step()
        peer_optimizer.zero_grad()

    runners["sentence-transformers"] = theirs
    position = 0
    for _ in range(args.train_warmup):  # tracing (every bucketed length a compiled step meets), allocation
        for run in runners.values():
            run(batches[position])
        position += 1
    times = {name: [] for name in runners}
    for _ in range(args.train_rounds):
        chunk = batches[position : position + args.train_steps_per_round]
        position += args.train_steps_per_round
        for name, run in runners.items():
            start = time.perf_counter()
            for batch in chunk:
                run(batch)
            times[name].append(len(chunk) * args.batch_size / (time.perf_counter() - start))
    rates = {name: statistics.median(values) for name, values in times.items()}
    peer_rate = rates["sentence-transformers"]
    results["training"] = dict(
        checkpoint="all-MiniLM-L6-v2", batch_size=args.batch_size, seq_len=args.seq_len,
        rounds=args.train_rounds, steps_per_round=args.train_steps_per_round, torch_threads=torch.get_num_threads(),
        cpu_flags=cpu_flags(), pairs_per_second=rates,
        ratio={name: rate / peer_rate for name, rate in rates.items() if name != "sentence-transformers"},
        compilations={setting: step.compilations() for setting, step in steps.items()},
        mean_padded_tokens_per_step={s: statistics.mean(n) for s, n in padded_tokens.items()},
        matmul_gflops=matmul_gflops(), all_rounds=times)
    for name, rate in rates.items():
        print(f"training {name}: {rate:.1f} pairs/s (x{rate / peer_rate:.2f} the peer)", flush=True)


def matmul_gflops(size=2048, repeats=5):
    """GFLOP/s of a float32 [size, size] x [size, size] product in TensorFlow: what this CPU can reach, for
    judging how close a training step comes to it."""
    a = tf.random.normal([size, size])
    product = tf.function(lambda x: tf.reduce_sum(tf.matmul(x, x)))
    product(a).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).numpy()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def loss_parity(args, results):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from samtone_tf.losses import samtone_loss

    peer = SentenceTransformer(str(models_dir() / "all-MiniLM-L6-v2"), device="cpu")
    rng = np.random.default_rng(0)
    rows = []
    for batch, temperature in ((8, 0.05), (64, 0.05), (256, 0.02), (64, 0.1)):
        q = rng.normal(size=(batch, 384))
        p = rng.normal(size=(batch, 384))
        q, p = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, p))
        for same_tower, directions in (("query", ("query_to_doc", "query_to_query")), ("none", ("query_to_doc",))):
            ours = float(tf.reduce_mean(samtone_loss(q.astype(np.float32), p.astype(np.float32),
                                                     temperature=temperature, same_tower=same_tower)))
            loss = MultipleNegativesRankingLoss(peer, scale=1.0 / temperature, directions=directions)
            theirs = float(loss.compute_loss_from_embeddings(
                [torch.tensor(q, dtype=torch.float32), torch.tensor(p, dtype=torch.float32)], None))
            rows.append(dict(batch=batch, temperature=temperature, same_tower=same_tower,
                             directions=list(directions), ours=ours, theirs=theirs, difference=abs(ours - theirs)))
    results["parity"] = dict(rows=rows, max_difference=max(r["difference"] for r in rows))
    print(f"parity: max |difference| {results['parity']['max_difference']:.2e}", flush=True)
    results["matryoshka_parity"] = matryoshka_parity(rng)
    print(f"Matryoshka parity: max |difference| {results['matryoshka_parity']['max_difference']:.2e}", flush=True)


def matryoshka_parity(rng):
    """Ours (`matryoshka_samtone_loss`, query-side SamToNe) against sentence-transformers' MatryoshkaLoss over
    MultipleNegativesRankingLoss(directions=("query_to_doc", "query_to_query")) on identical embeddings: a module
    that returns the embeddings it is given stands for the model."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    from samtone_tf.losses import matryoshka_samtone_loss

    class Given(torch.nn.Module):
        def forward(self, features):
            return {"sentence_embedding": features["embedding"]}

        def get_embedding_dimension(self):
            return 384

    rows = []
    for batch, temperature, dims, weights in ((64, 0.05, [384, 256, 128, 64], [1, 1, 1, 1]),
                                              (256, 0.02, [384, 128], [1.0, 0.5]),
                                              (32, 0.1, [384, 192, 96, 48], [1.0, 0.8, 0.6, 0.4])):
        q, p = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (rng.normal(size=(batch, 384)),
                                                                       rng.normal(size=(batch, 384))))
        ours = float(tf.reduce_mean(matryoshka_samtone_loss(q.astype(np.float32), p.astype(np.float32),
                                                            dimensions=dims, weights=weights,
                                                            temperature=temperature)))
        model = Given()
        peer = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=1.0 / temperature, directions=(
            "query_to_doc", "query_to_query")), matryoshka_dims=dims, matryoshka_weights=weights)
        theirs = float(peer([{"embedding": torch.tensor(q, dtype=torch.float32)},
                             {"embedding": torch.tensor(p, dtype=torch.float32)}], None))
        rows.append(dict(batch=batch, temperature=temperature, dims=dims, weights=weights, ours=ours, theirs=theirs,
                         difference=abs(ours - theirs)))
    return dict(rows=rows, max_difference=max(r["difference"] for r in rows))


def real_embeddings(args):
    """Document and query embeddings of the real benchmark corpora (cached on disk)."""
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    documents_path, queries_path = cache / "documents.npy", cache / "queries.npy"
    if documents_path.is_file() and queries_path.is_file():
        return np.load(documents_path), np.load(queries_path)
    model = dual_encoder_from_checkpoint(architecture="sde", query_max_length=32,
                                         document_max_length=args.search_doc_len)
    documents, queries = [], []
    for name in REAL_CORPORA:
        data = load_evaluation(name)
        documents.append(model.encode_documents([data.document_text(d) for d in data.corpus], batch_size=128))
        queries.append(model.encode_queries(list(data.queries.values()), batch_size=128))
        print(f"  encoded {name}: {len(data.corpus)} documents, {len(data.queries)} queries", flush=True)
    documents, queries = np.concatenate(documents), np.concatenate(queries)
    np.save(documents_path, documents)
    np.save(queries_path, queries)
    return documents, queries


def extended(real, size, rng, spread):
    """`real` plus synthetic unit vectors around randomly chosen real ones, `size` rows in all."""
    extra = size - len(real)
    if extra <= 0:
        return real[:size]
    out = np.empty((size, real.shape[1]), np.float32)
    out[: len(real)] = real
    for start in range(len(real), size, 100_000):
        stop = min(start + 100_000, size)
        centers = real[rng.integers(0, len(real), size=stop - start)]
        block = centers + rng.normal(scale=spread, size=centers.shape).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def search_speed(args, results):
    documents, queries = real_embeddings(args)
    rng = np.random.default_rng(0)
    rows = []
    for size in args.search_sizes:
        corpus = extended(documents, size, rng, args.synthetic_spread)
        ids = np.arange(size)
        exact = ExactIndex(corpus, ids)
        exact.search(queries[:64], 10)  # warm-up
        start = time.perf_counter()
        truth, _ = exact.search(queries, 10)
        exact_qps = len(queries) / (time.perf_counter() - start)
        settings = scann_defaults(size, corpus.shape[1])
        start = time.perf_counter()
        index = ScannIndex(corpus, ids, k=10)
        build_seconds = time.perf_counter() - start
        index.search(queries[:64], 10)
        for leaves in sorted({settings["num_leaves_to_search"]} | set(args.leaves_to_search)):
            if leaves > settings.get("num_leaves", 0):
                continue
            start = time.perf_counter()
            found, _ = index.search(queries, 10, leaves_to_search=leaves)
            qps = len(queries) / (time.perf_counter() - start)
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
            rows.append(dict(size=size, real=len(documents), queries=len(queries), exact_qps=exact_qps,
                             scann_qps=qps, speedup=qps / exact_qps, recall_at_10=recall, leaves=settings["num_leaves"],
                             leaves_searched=leaves, default=leaves == settings["num_leaves_to_search"],
                             build_seconds=build_seconds))
            print(f"search {size}: exact {exact_qps:.0f} q/s; ScaNN {leaves}/{settings['num_leaves']} leaves "
                  f"{qps:.0f} q/s (x{qps / exact_qps:.1f}), recall@10 {recall:.3f}", flush=True)
        del corpus, exact, index
    results["search"] = dict(rows=rows, synthetic_spread=args.synthetic_spread, doc_len=args.search_doc_len)


def encoding_speed(args, results):
    from samtone_tf.serving import ExportedEncoder, export

    data = load_evaluation("beir:scifact")
    texts = [data.document_text(d) for d in list(data.corpus)[: args.encode_documents]]
    model = dual_encoder_from_checkpoint(architecture="sde", document_max_length=args.seq_len)
    with tempfile.TemporaryDirectory() as directory:
        export(model, Path(directory) / "export", verbose=False)
        exported = ExportedEncoder(Path(directory) / "export")
        encoders = {"in-process (tf.function)": lambda: model.encode_documents(texts, verbose=False),
                    "exported SavedModel": lambda: exported.encode_documents(texts, verbose=False)}
        outputs = {name: encode() for name, encode in encoders.items()}
        times = {name: [] for name in encoders}
        for _ in range(args.encode_rounds):
            for name, encode in encoders.items():
                start = time.perf_counter()
                encode()
                times[name].append(len(texts) / (time.perf_counter() - start))
    rates = {name: statistics.median(values) for name, values in times.items()}
    difference = float(np.abs(outputs["in-process (tf.function)"] - outputs["exported SavedModel"]).max())
    results["encoding"] = dict(documents=len(texts), seq_len=args.seq_len, documents_per_second=rates,
                               max_abs_difference=difference)
    print(f"encoding: {rates}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["parity", "training", "encoding", "search"])
    parser.add_argument("--json", default=None)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--train_settings", nargs="+", default=["float32", "bf16", "jit"], type=training_setting,
                        help="our training settings to time against the peer")
    parser.add_argument("--train_warmup", type=int, default=3)
    parser.add_argument("--train_rounds", type=int, default=4)
    parser.add_argument("--train_steps_per_round", type=int, default=5)
    parser.add_argument("--search_sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--leaves_to_search", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--synthetic_spread", type=float, default=0.03,
                        help="per-dimension standard deviation of the synthetic vectors around a real one")
    parser.add_argument("--search_doc_len", type=int, default=64)
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "samtone_speed_cache"))
    parser.add_argument("--encode_documents", type=int, default=512)
    parser.add_argument("--encode_rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else {}
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}"
    results["cpu_flags"] = cpu_flags()
    parts = {"training": training_throughput, "parity": loss_parity, "search": search_speed,
             "encoding": encoding_speed}
    for part in args.parts:
        parts[part](args, results)
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=1))
    print()
    print(tables.speed(results))
    return 0


if __name__ == "__main__":
    main()
