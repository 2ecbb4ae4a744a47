"""Corpus encoding speed: the default tower against sentence-transformers, same checkpoint.

    python benchmarks/encode_speed.py [--documents 1024] [--batch_size 64] [--max_length 128]

Needs torch 2.13.0 and sentence-transformers besides samtone_tf (benchmark only:
`pip install torch==2.13.0 sentence-transformers`). Documents are SQuAD v1.1 dev
paragraphs, long enough that every one fills the max_length tokens. Each encoder
runs a warm-up pass, then `--rounds` timed passes, interleaved; the median is
reported. Prints a Markdown table; writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import samtone_tf.options  # noqa: E402,F401  (first: it sets TensorFlow's environment before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tables  # noqa: E402,I001  (benchmarks/tables.py, beside this script)
from samtone_tf.atomic import atomic_write_text  # noqa: E402
from samtone_tf.locations import data_dir, models_dir  # noqa: E402
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint  # noqa: E402


def long_paragraphs(count, data_directory=None):
    squad = json.loads((data_dir(data_directory) / "squad" / "dev-v1.1.json").read_text())
    texts = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    texts = [t for t in texts if len(t.split()) >= 110]
    return texts[:count]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--models_dir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    checkpoint = models_dir(args.models_dir) / "all-MiniLM-L6-v2"
    texts = long_paragraphs(args.documents, args.data_dir)
    model = dual_encoder_from_checkpoint(checkpoint, architecture="sde",
                                         document_max_length=args.max_length)
    tower = model.document_tower
    lengths = tower.tokenizer(tf.constant(texts))["padding_mask"].numpy().sum(axis=1)
    peer = SentenceTransformer(str(checkpoint), device="cpu")
    peer.max_seq_length = args.max_length

    encoders = {
        "samtone_tf (tf.function)": lambda: model.encode_documents(texts, args.batch_size, verbose=False),
        "samtone_tf (jit_compile=True)": lambda: model.encode_documents(
            texts, args.batch_size, verbose=False, jit_compile=True),
        "sentence-transformers": lambda: peer.encode(
            texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True),
    }
    outputs = {name: encode() for name, encode in encoders.items()}  # warm-up, tracing, compiling
    reference = outputs["sentence-transformers"]
    agreement = {name: float(np.min(np.sum(out * reference, axis=1))) for name, out in outputs.items()}
    times = {name: [] for name in encoders}
    for _ in range(args.rounds):
        for name, encode in encoders.items():
            start = time.perf_counter()
            encode()
            times[name].append(time.perf_counter() - start)

    peer_rate = len(texts) / statistics.median(times["sentence-transformers"])
    rows = []
    for name in encoders:
        rate = len(texts) / statistics.median(times[name])
        rows.append(dict(encoder=name, documents_per_second=rate, ratio=rate / peer_rate,
                         min_cosine_to_peer=agreement[name]))
    print(f"\n{len(texts)} SQuAD paragraphs, all-MiniLM-L6-v2, max_length {args.max_length} "
          f"(mean {lengths.mean():.1f} tokens), batch {args.batch_size}, median of {args.rounds}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)\n")
    results = dict(vars(args), mean_tokens=float(lengths.mean()), rows=rows)
    print(tables.encode_speed(results))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
