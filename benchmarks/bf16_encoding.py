"""bf16 encoding (issue 44, item 4): documents/s of all-MiniLM-L6-v2 encoding BEIR SciFact documents (length 256)
in float32, with Keras's mixed_bfloat16 policy (`--compute_dtype bfloat16`), and with oneDNN's bf16 math inside
float32 ops (`TF_SET_ONEDNN_FPMATH_MODE=BF16`), against sentence-transformers in float32 and in bfloat16 on the same
machine; each in a fresh process, rounds alternated; then SciFact test nDCG@10 through `evaluate` in each of ours.

    python benchmarks/bf16_encoding.py --json docs/results/bf16_encoding.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from machine import cpu_flags, describe, vector_class  # noqa: E402

WORKER = r"""
import json, sys, time
mode, count, length, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
import numpy as np
from samtone_tf.data.datasets import load_evaluation
data = load_evaluation("beir:scifact", "test")
texts = [data.document_text(d) for d in list(data.corpus)[:count]]
if mode.startswith("st_"):
    import torch
    from sentence_transformers import SentenceTransformer
    from samtone_tf.locations import models_dir
    torch.set_num_threads(2)
    model = SentenceTransformer(str(models_dir() / "all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = length
    if mode == "st_bfloat16":
        model = model.to(torch.bfloat16)
    encode = lambda t: model.encode(t, batch_size=batch, convert_to_tensor=True).float().numpy()
else:
    from samtone_tf.model.pretrained import dual_encoder_from_checkpoint
    from samtone_tf.models import with_compute_dtype
    model = dual_encoder_from_checkpoint(architecture="sde", query_max_length=length, document_max_length=length)
    model = with_compute_dtype(model, "bfloat16" if mode == "keras_bf16" else "float32")
    encode = lambda t: model.encode_documents(t, batch_size=batch, verbose=False)
encode(texts[:batch])  # warm-up: traces
start = time.perf_counter()
embeddings = encode(texts)
seconds = time.perf_counter() - start
np.save(sys.argv[5], np.asarray(embeddings, np.float32)[:200])
print(json.dumps({"mode": mode, "documents_per_second": count / seconds, "seconds": seconds}))
"""

MODES = ("float32", "keras_bf16", "fpmath_bf16", "st_float32", "st_bfloat16")


def environment(mode):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("TF_SET_ONEDNN_FPMATH_MODE", None)
    if mode == "fpmath_bf16":
        env["TF_SET_ONEDNN_FPMATH_MODE"] = "BF16"
    return env


def measure(mode, args, scratch, round_index):
    path = Path(scratch) / f"{mode}-{round_index}.npy"
    result = subprocess.run([sys.executable, "-c", WORKER, mode, str(args.documents), str(args.length),
                             str(args.batch_size), str(path)], cwd=REPOSITORY, env=environment(mode),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row["embeddings"] = str(path)
    return row


def ndcg(mode, scratch):
    out = Path(scratch) / f"evaluate-{mode}.json"
    command = [sys.executable, "-m", "samtone_tf.evaluate", "--model", "all-MiniLM-L6-v2", "--dataset",
               "beir:scifact", "--split", "test", "--out", str(out)]
    if mode == "keras_bf16":
        command += ["--compute_dtype", "bfloat16"]
    result = subprocess.run(command, cwd=REPOSITORY, env=environment(mode), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"evaluate ({mode}) failed:\n{result.stderr[-3000:]}")
    return json.loads(out.read_text())["metrics"]["nDCG@10"]


def main(argv=None):
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=512)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--ndcg_modes", nargs="*", default=["float32", "keras_bf16", "fpmath_bf16"],
                        help="our modes whose SciFact nDCG@10 evaluate measures (none: skip)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    flags = cpu_flags()
    results = {"benchmark": "bf16_encoding", "machine": describe(), "cpu_flags": flags,
               "cpu_class": vector_class(flags), "date": time.strftime("%Y-%m-%d"), "documents": args.documents,
               "length": args.length, "batch_size": args.batch_size, "rows": []}
    with tempfile.TemporaryDirectory(prefix="samtone-bf16-") as scratch:
        runs = {mode: [] for mode in args.modes}
        for round_index in range(args.rounds):  # alternated: a slow minute of the machine hits every mode
            for mode in args.modes:
                runs[mode].append(measure(mode, args, scratch, round_index))
                print(runs[mode][-1], flush=True)
        reference = np.load(runs[args.modes[0]][0]["embeddings"])
        for mode, rows in runs.items():
            rates = [row["documents_per_second"] for row in rows]
            embeddings = np.load(rows[0]["embeddings"])
            cosine = np.sum(embeddings * reference, 1) / np.linalg.norm(embeddings, axis=1) / np.linalg.norm(
                reference, axis=1)
            results["rows"].append({"mode": mode, "documents_per_second": rates,
                                    "median": statistics.median(rates),
                                    "min_cosine_to_float32": float(cosine.min())})
        base = next(r["median"] for r in results["rows"] if r["mode"] == args.modes[0])
        for row in results["rows"]:
            row["ratio"] = row["median"] / base
        if args.ndcg_modes:
            for row in results["rows"]:
                if row["mode"] in args.ndcg_modes and not row["mode"].startswith("st_"):
                    row["nDCG@10"] = ndcg(row["mode"], scratch)
                    print(row["mode"], row["nDCG@10"], flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        from samtone_tf.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1))
    import tables

    print(tables.bf16_encoding(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
