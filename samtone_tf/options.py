"""Every option list of the package in one place (the commands' `choices=`, the configuration's validation and
the model's checks read them here), and the TensorFlow environment the package sets before TensorFlow loads.

Ground floor: imports nothing of ours.
"""

from __future__ import annotations

import os

ARCHITECTURES = ("sde", "ade", "ade_spl", "ade_ste", "ade_fte")  # Dong et al. (EMNLP 2022): what the towers share
SAME_TOWER_SIDES = ("none", "query", "document", "both")  # where SamToNe's same-tower negatives are added
POOLINGS = ("mean", "cls")
OPTIMIZERS = ("adamw", "adafactor")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")  # tf.distribute strategies by name
PRECISION_POLICIES = {"none": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}  # Keras dtype policies
PRECISIONS = tuple(PRECISION_POLICIES)
SEARCH_INDEXES = ("exact", "scann")  # evaluate, mine and index build
INDEX_KINDS = (*SEARCH_INDEXES, "codes")  # index build: codes = index.quantized (--dims, --precision, --rescore)
CODE_PRECISIONS = ("float32", "int8", "binary")
COMPUTE_DTYPES = ("float32", "bfloat16")  # encoding: evaluate, export, mine, encode --compute_dtype  # the corpus codes of evaluate --precision (index.quantized)
SERVED_RETRIEVERS = ("exact", "partitioned")  # export --corpus: pure TensorFlow ops, for stock TF Serving
CORPUS_FORMATS = ("beir", "id_text")
EXPORT_FORMATS = ("tf-serving", "sentence-transformers")  # export --format


def set_tensorflow_environment():
    """Sets TensorFlow's environment flags, unless the user set them. Effective only before TensorFlow is
    imported: the package root calls it first thing. -> whether the user had set TF_CPP_MIN_LOG_LEVEL."""
    # oneDNN kernels make TensorFlow's CPU matmuls ~1.4x faster on this project's models, but TF 2.20 enables
    # them by default only on some CPUs.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    # TensorFlow's C++ start-up chatter (CUDA probing, CPU features) hides our progress output. The commands hide
    # the rest (cli.quiet_native_logs) unless the user set it or passed --verbose.
    user_set_log_level = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return user_set_log_level


USER_SET_TF_LOG_LEVEL = set_tensorflow_environment()
