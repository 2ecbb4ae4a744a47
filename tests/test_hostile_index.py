"""Index directories planted with code: loading runs none of it and says why it refuses."""

import pickle

import numpy as np
import pytest

from samtone_tf.index.search import ScannIndex


class _Payload:
    """Unpickling this creates a marker file: proof that code from the index ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def saved_index(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(300, 8)).astype(np.float32)
    ids = [f"d{i}" for i in range(300)]
    ScannIndex(embeddings, ids, k=5).save(tmp_path / "index")
    return tmp_path / "index", embeddings, ids


@pytest.mark.parametrize("where", ["scann/scann_docids.pkl", "scann_docids.pkl", "extra/evil.pickle"])
def test_a_planted_pickle_never_runs(saved_index, tmp_path, where):
    directory, _, _ = saved_index
    marker = tmp_path / "pwned"
    planted = directory / where
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="refusing to load an index holding pickle files"):
        ScannIndex.load(directory)
    assert not marker.exists()


def test_the_index_we_write_loads_and_answers_as_saved(saved_index):
    directory, embeddings, ids = saved_index
    loaded = ScannIndex.load(directory)
    want_ids, want_scores = ScannIndex(embeddings, ids, k=5).search(embeddings[:20], 5)
    got_ids, got_scores = loaded.search(embeddings[:20], 5)
    assert (got_ids == want_ids).all()
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


def test_asset_paths_outside_the_index_are_refused(saved_index, tmp_path):
    directory, _, _ = saved_index
    assets = directory / "scann" / "scann_assets.pbtxt"
    outside = tmp_path / "elsewhere.npy"
    np.save(outside, np.zeros((300, 8), np.float32))
    assets.write_text(assets.read_text().replace('"dataset.npy"', '"../../elsewhere.npy"'))
    with pytest.raises(ValueError, match="lies outside the index directory"):
        ScannIndex.load(directory)


def test_damaged_index_files_are_one_clear_error(saved_index):
    directory, _, _ = saved_index
    (directory / "doc_ids.json").write_text('["d0", "d1"')
    with pytest.raises(ValueError, match="not a readable samtone_tf index"):
        ScannIndex.load(directory)
