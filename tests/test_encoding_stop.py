"""`encoding.stop_encoding_when`: an encoding asked to stop leaves between two batches, and only inside it."""

import numpy as np
import pytest

from samtone_tf.encoding import EncodingStopped, encode_in_batches, stop_encoding_when
from samtone_tf.model.towers import tiny_dual_encoder
from tests.helpers import TINY_VOCABULARY, WORDS


def test_an_encoding_asked_to_stop_leaves_before_its_next_batch_and_only_while_asked():
    tower = tiny_dual_encoder(TINY_VOCABULARY).document_tower
    texts = [" ".join(WORDS[: 1 + i % 5]) for i in range(10)]
    batches = []

    def encode_batch(batch):
        batches.append(int(batch.shape[0]))
        return tower(batch)

    with stop_encoding_when(lambda: len(batches) >= 2):
        with pytest.raises(EncodingStopped, match="encoding stopped after 4 of 10 texts"):
            encode_in_batches(encode_batch, texts, batch_size=2, verbose=False)
    assert batches == [2, 2]

    batches.clear()
    embeddings = encode_in_batches(encode_batch, texts, batch_size=2, verbose=False)  # not asked any more
    assert batches == [2] * 5
    np.testing.assert_allclose(embeddings, np.asarray(tower(texts)), rtol=1e-5, atol=1e-6)
