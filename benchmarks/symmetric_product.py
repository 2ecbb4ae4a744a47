"""What a symmetric product (BLAS SYRK) would give the query-side SamToNe loss, which TensorFlow cannot ask for.

    python benchmarks/symmetric_product.py [--batch 1024] [--dim 384] [--repeats 21] [--json FILE]

The same-tower block q·qᵀ of query-side SamToNe is symmetric: a SYRK computes one triangle of it in about half a
general product's arithmetic. TensorFlow has no such op (nor has XLA), so this measures in one process: the
standard loss and query-side SamToNe (forward + backward, as benchmarks/loss_overhead.py times them),
TensorFlow's product q·qᵀ and making a triangle whole in TensorFlow (the loss's row-wise logsumexp needs every
row), interleaved round by round; then the BLAS SYRK of the same q (scipy's OpenBLAS, benchmarks only) in rounds
of its own, because OpenBLAS's threads keep spinning after a call and halve TensorFlow's speed beside them. The
projection swaps the product for the other two: the query-side loss if TensorFlow had a SYRK as fast as
OpenBLAS's.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.linalg import blas  # noqa: E402

import tables  # noqa: E402,I001  (benchmarks/tables.py, beside this script)
from loss_overhead import interleaved_medians, make_step  # noqa: E402
from machine import cpu_flags, describe  # noqa: E402
from samtone_tf.atomic import atomic_write_text  # noqa: E402


def operations(batch, dim):
    """({name: a TensorFlow operation run once, its result awaited}, the BLAS SYRK run once, a check that the
    SYRK's triangle made whole equals TensorFlow's product)."""
    query = tf.math.l2_normalize(tf.random.normal([batch, dim], seed=1), axis=-1)
    document = tf.math.l2_normalize(tf.random.normal([batch, dim], seed=2), axis=-1)
    standard, same_tower = make_step("none", False, False), make_step("query", False, False)
    product = tf.function(lambda q: tf.matmul(q, q, transpose_b=True))
    # The triangle made whole: its transpose added, the diagonal counted once.
    whole = tf.function(lambda upper: upper + tf.linalg.set_diag(tf.transpose(upper), tf.zeros([batch])))
    upper = tf.linalg.band_part(product(query), 0, -1)  # a triangle as the SYRK leaves it (the rest zeros)
    query_fortran = np.asfortranarray(query.numpy())  # BLAS's own layout: no copy inside the timing

    def check():
        np.testing.assert_allclose(whole(tf.constant(blas.ssyrk(1.0, query_fortran))).numpy(),
                                   product(query).numpy(), atol=1e-5)

    tensorflow_operations = {
        "standard": lambda: standard(query, document)[1][0].numpy(),
        "same_tower": lambda: same_tower(query, document)[1][0].numpy(),
        "product": lambda: product(query).numpy(),
        "whole": lambda: whole(upper).numpy(),
    }
    return tensorflow_operations, lambda: blas.ssyrk(1.0, query_fortran), check


def blas_library():
    import scipy

    blas_build = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return f"{blas_build['name']} {blas_build['version']} (scipy {scipy.__version__})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)

    tensorflow_operations, syrk, check = operations(args.batch, args.dim)
    seconds = interleaved_medians(tensorflow_operations, args.repeats)
    seconds.update(interleaved_medians({"syrk": syrk}, args.repeats))  # after TensorFlow's rounds: see the docstring
    ms = {name: 1000 * value for name, value in seconds.items()}
    check()
    results = dict(machine=f"{describe()}, TF {tf.__version__}", cpu_flags=cpu_flags(), batch=args.batch,
                   dim=args.dim, repeats=args.repeats, blas=blas_library(), ms=ms)
    print(tables.symmetric_product(results))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
