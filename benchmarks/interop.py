"""Round trips between the ecosystems (issue 45): every architecture built from all-MiniLM-L6-v2, written as a
sentence-transformers directory and exported as our SavedModels; the embeddings sentence-transformers computes
from the directory against our SavedModel's, min cosine over the reference texts (accents, long and empty texts,
SciFact documents). Then a published checkpoint exported without training (`export --model all-MiniLM-L6-v2`)
and scored zero-shot on BEIR SciFact test through `evaluate` on the checkpoint and on the export: the commands a
user types.

    pip install torch==2.13.0 sentence-transformers   # benchmark only
    python benchmarks/interop.py --json docs/results/interop.json
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

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

import samtone_tf.options  # noqa: E402,F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import numpy as np  # noqa: E402
from machine import cpu_flags, describe  # noqa: E402

from samtone_tf.atomic import atomic_write_text  # noqa: E402
from samtone_tf.data.datasets import load_evaluation  # noqa: E402
from samtone_tf.model.pretrained import dual_encoder_from_checkpoint  # noqa: E402
from samtone_tf.model.sentence_transformers_format import write_sentence_transformers  # noqa: E402
from samtone_tf.options import ARCHITECTURES  # noqa: E402
from samtone_tf.serving import export, run_like_tf_serving  # noqa: E402

SPECIAL_TEXTS = ["Ça va? Naïve café, Ångström, São Paulo, Müller", "", " ", "ﬁnance — “quoted” text…",
                 "who wrote hamlet and when " * 60, "A", "東京 is Tokyo"]


def reference_texts(count):
    corpus = load_evaluation("beir:scifact", "test")
    documents = [corpus.document_text(d) for d in list(corpus.corpus)[:count]]
    return SPECIAL_TEXTS + documents


def round_trip(architecture, texts, directory):
    from sentence_transformers import SentenceTransformer

    model = dual_encoder_from_checkpoint(architecture=architecture, query_max_length=64, document_max_length=256)
    write_sentence_transformers(model, directory / "st")
    export(model, directory / "export", verbose=False)
    loaded = SentenceTransformer(str(directory / "st"), device="cpu", local_files_only=True)
    row = {"architecture": architecture, "texts": len(texts),
           "routes": "query, document" if (directory / "st" / "router_config.json").is_file() else "one"}
    for side, encode in (("query", loaded.encode_query), ("document", loaded.encode_document)):
        theirs = np.asarray(encode(texts, batch_size=32, convert_to_numpy=True), np.float64)
        ours = np.concatenate([run_like_tf_serving(directory / "export" / f"{side}_encoder" / "1",
                                                   texts[i:i + 32])["embedding"] for i in range(0, len(texts), 32)])
        ours = np.asarray(ours, np.float64)
        cosine = np.sum(theirs * ours, 1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(ours, axis=1)
        row[f"{side}_min_cosine"] = float(cosine.min())
        row[f"{side}_max_abs_difference"] = float(np.abs(theirs - ours).max())
    return row


def command(*arguments):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", *arguments], cwd=REPOSITORY, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def zero_shot(directory):
    export_dir = directory / "minilm"
    seconds = {"export": command("samtone_tf.export", "--model", "all-MiniLM-L6-v2", "--out", str(export_dir))}
    rows = []
    for label, model in (("evaluate on the checkpoint", "all-MiniLM-L6-v2"),
                         ("evaluate on the export", str(export_dir))):
        out = directory / f"{label.replace(' ', '_')}.json"
        took = command("samtone_tf.evaluate", "--model", model, "--dataset", "beir:scifact", "--split", "test",
                       "--out", str(out))
        metrics = json.loads(out.read_text())["metrics"]
        rows.append({"path": label, "nDCG@10": metrics["nDCG@10"], "P@1": metrics["P@1"], "seconds": took})
    return {"export_seconds": seconds["export"], "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200, help="SciFact documents among the reference texts")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import sentence_transformers
    import torch

    texts = reference_texts(args.documents)
    results = {"benchmark": "interop", "machine": describe(), "cpu_flags": cpu_flags(),
               "torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
               "date": time.strftime("%Y-%m-%d"), "round_trip": [], "zero_shot": None}
    with tempfile.TemporaryDirectory(prefix="samtone-interop-") as scratch:
        for architecture in ARCHITECTURES:
            directory = Path(scratch) / architecture
            directory.mkdir()
            results["round_trip"].append(round_trip(architecture, texts, directory))
            print(results["round_trip"][-1], flush=True)
        results["zero_shot"] = zero_shot(Path(scratch))
    print(json.dumps(results, indent=1))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))
    sys.path.insert(0, str(REPOSITORY / "benchmarks"))
    import tables

    print(tables.interop(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
