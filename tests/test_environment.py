"""Smoke test: every pinned package imports together, at the pinned version."""

import importlib
import re
from pathlib import Path

import samtone_tf

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"

# distribution name -> module name where they differ
MODULES = {
    "tensorflow-text": "tensorflow_text",
    "keras-hub": "keras_hub",
    "tensorflow-hub": "tensorflow_hub",
    "tensorflow-datasets": "tensorflow_datasets",
    "protobuf": "google.protobuf",
    "pytrec-eval-terrier": "pytrec_eval",
    "scikit-learn": "sklearn",
    "apache-beam": "apache_beam",
    "google-crc32c": "google_crc32c",
    "pytest-xdist": "xdist",
}


def pinned():
    for line in REQUIREMENTS.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if match:
            yield match.group(1), match.group(2)


def test_every_pinned_package_imports_at_its_pinned_version():
    from importlib.metadata import version

    packages = list(pinned())
    assert {"tensorflow", "scann", "keras", "keras-hub"} <= {name for name, _ in packages}
    for name, wanted in packages:
        importlib.import_module(MODULES.get(name, name))
        assert version(name) == wanted, name


def test_scann_tensorflow_ops_load_beside_tensorflow():
    import numpy as np
    import scann

    data = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    searcher = scann.scann_ops.builder(data, 5, "dot_product").score_brute_force().build()
    neighbors, _ = searcher.search_batched(data[:3])
    assert neighbors.numpy()[:, 0].tolist() == [int(np.argmax(data @ row)) for row in data[:3]]


def test_version_is_exposed():
    assert re.match(r"^\d+\.\d+\.\d+", samtone_tf.__version__)
