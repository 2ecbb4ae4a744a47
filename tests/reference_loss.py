"""An independent NumPy float64 reference of the SamToNe loss, written from DESIGN.md.

Deliberately loop-based and unlike the implementation: each denominator is built
term by term from the definition.
"""

import numpy as np


def reference_samtone(
    q, p, h=None, *, tau, same_tower, bidirectional, query_ids=None, document_ids=None, hard_negative_ids=None
):
    """Per-example loss [B] in float64. q, p: [B, D]; h: [B, H, D] or None; hard_negative_ids: [B][H]
    document ids of h (a hard negative that is row i's positive, or the positive of a row with row
    i's query id, is not a negative of row i)."""
    q = np.asarray(q, np.float64)
    p = np.asarray(p, np.float64)
    batch = q.shape[0]
    negatives = [] if h is None else [np.asarray(x, np.float64) for row in h for x in row]
    negative_ids = [None] * len(negatives) if hard_negative_ids is None else [
        x for row in hard_negative_ids for x in row]

    def positive_of_same_query(i, doc_id):
        for j in range(batch):
            same = j == i or (query_ids is not None and query_ids[i] == query_ids[j])
            if same and document_ids[j] == doc_id:
                return True
        return False

    def excluded(i, j):
        if j == i:
            return False
        same_query = query_ids is not None and query_ids[i] == query_ids[j]
        same_doc = document_ids is not None and document_ids[i] == document_ids[j]
        return same_query or same_doc

    losses = np.zeros(batch)
    for i in range(batch):
        positive = np.exp(q[i] @ p[i] / tau)
        denominator = 0.0
        for j in range(batch):
            if not excluded(i, j):
                denominator += np.exp(q[i] @ p[j] / tau)
        for n, n_id in zip(negatives, negative_ids):
            if n_id is None or not positive_of_same_query(i, n_id):
                denominator += np.exp(q[i] @ n / tau)
        if same_tower in ("query", "both"):
            for j in range(batch):
                if j != i and not excluded(i, j):
                    denominator += np.exp(q[i] @ q[j] / tau)
        losses[i] = -np.log(positive / denominator)
        if bidirectional:
            denominator = 0.0
            for j in range(batch):
                if not excluded(i, j):
                    denominator += np.exp(p[i] @ q[j] / tau)
            if same_tower in ("document", "both"):
                for j in range(batch):
                    if j != i and not excluded(i, j):
                        denominator += np.exp(p[i] @ p[j] / tau)
            losses[i] += -np.log(positive / denominator)
    return losses


def finite_difference_gradient(f, arrays, eps=1e-6):
    """Central differences of the scalar f(*arrays) with respect to each array."""
    grads = []
    for index, array in enumerate(arrays):
        grad = np.zeros_like(array, dtype=np.float64)
        flat = grad.reshape(-1)
        for k in range(array.size):
            plus = [a.astype(np.float64).copy() for a in arrays]
            minus = [a.astype(np.float64).copy() for a in arrays]
            plus[index].reshape(-1)[k] += eps
            minus[index].reshape(-1)[k] -= eps
            flat[k] = (f(*plus) - f(*minus)) / (2 * eps)
        grads.append(grad)
    return grads
