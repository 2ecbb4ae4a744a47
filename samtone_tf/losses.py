"""The SamToNe loss: in-batch softmax with same-tower negatives, on embeddings.

Pure TensorFlow on embeddings; knows nothing of towers or data. Under a
`tf.distribute` strategy with more than one replica, each replica scores its
LOCAL rows against the batch GATHERED from all replicas, so the loss and its
gradients equal the single-device loss over the concatenated batch.
"""

from __future__ import annotations

import tensorflow as tf

from samtone_tf.options import SAME_TOWER_SIDES


def samtone_loss(
    query,
    document,
    hard_negatives=None,
    *,
    temperature=0.05,
    same_tower="query",
    bidirectional=False,
    query_ids=None,
    document_ids=None,
    hard_negative_ids=None,
):
    """Per-example SamToNe loss.

    For row i with positive document p_i and similarity s (the dot product of
    the embeddings as given; towers L2-normalise them):

        query->document:  -log e^{s(q_i,p_i)/t} / (sum_j e^{s(q_i,p_j)/t}
                             + sum_k e^{s(q_i,h_k)/t} + [sum_{j!=i} e^{s(q_i,q_j)/t}])
        document->query:  -log e^{s(p_i,q_i)/t} / (sum_j e^{s(p_i,q_j)/t}
                             + [sum_{j!=i} e^{s(p_i,p_j)/t}])

    The bracketed same-tower terms are present for `same_tower` "query"
    (query side), "document" (document side) or "both". j runs over the GLOBAL
    batch (all replicas) and k over every hard negative of the global batch.

    Args:
      query: float [B, D] query embeddings.
      document: float [B, D] embeddings of each query's positive document.
      hard_negatives: optional float [B, H, D] extra negative documents.
      temperature: positive float or scalar tensor (e.g. a learnable one).
      same_tower: "none" (standard in-batch softmax), "query", "document" or
        "both".
      bidirectional: add the document->query softmax; the per-example loss is
        then the sum of the two directions. Required by "document"/"both".
      query_ids: optional [B] int or string ids. Rows j != i sharing row i's
        query id or document id are removed from all four term groups of row i
        (q->p, p->q, q->q, p->p): they are not negatives of each other.
      document_ids: optional [B] int or string ids, as `query_ids`.
      hard_negative_ids: optional [B, H] document ids of `hard_negatives` (same
        kind as `document_ids`, which it requires). A hard negative whose id is
        row i's positive document, or the positive of a row sharing row i's
        query id, is not a negative of row i.

    Returns:
      float32 [B] per-example loss for the local rows.

    Raises:
      ValueError: naming the argument, for an unknown `same_tower`, a
        document-side option without `bidirectional`, a non-positive
        temperature, or mismatched ranks, batch sizes or dimensions.

    Long because: the reference formula and its cross-replica gathering in one place (each block of logits beside
    its mask), so it reads against the paper's equations.
    """
    check_options(same_tower, bidirectional, temperature)
    query = _as_float32(query)
    document = _as_float32(document)
    if hard_negatives is not None:
        hard_negatives = _as_float32(hard_negatives)
    _check_shapes(query, document, hard_negatives, query_ids, document_ids, hard_negative_ids)
    query_key = _id_key("query_ids", query_ids)
    document_key = _id_key("document_ids", document_ids)
    hard_key = _id_key("hard_negative_ids", hard_negative_ids)
    temperature = tf.cast(temperature, tf.float32)

    local_batch = tf.shape(query)[0]
    all_queries, all_documents, all_hard, all_query_key, all_document_key, all_hard_key, offset = (
        gather_across_replicas(query, document, hard_negatives, query_key, document_key, hard_key))
    distributed = all_queries is not query

    global_batch = tf.shape(all_queries)[0]
    has_ids = query_key is not None or document_key is not None
    is_positive = None
    is_excluded = None
    if has_ids or all_hard_key is not None:
        positive_column = offset + tf.range(local_batch)  # [B]
        is_positive = tf.equal(positive_column[:, None], tf.range(global_batch)[None, :])  # [B, G]
    if has_ids:
        is_excluded = _shared_id_mask([query_key, document_key], [all_query_key, all_document_key],
                                      is_positive)  # [B, G]

    # Scaling the [B, D] anchors by 1/t costs one pass over B*D numbers instead of one over every [B, G]
    # block of logits; the temperature's gradient flows through the scaled anchors.
    inverse_temperature = 1.0 / temperature
    scaled_query = query * inverse_temperature
    # s(q_i, p_i) = s(p_i, q_i): one positive logit serves both directions.
    positive_logit = tf.reduce_sum(scaled_query * document, axis=1)
    query_document = tf.matmul(scaled_query, all_documents, transpose_b=True)  # [B, G]
    columns = [_drop(query_document, is_excluded)]
    if all_hard is not None:
        flat_hard = tf.reshape(all_hard, [-1, tf.shape(all_hard)[-1]])
        hard_logits = tf.matmul(scaled_query, flat_hard, transpose_b=True)  # [B, G*H]
        if all_hard_key is not None:
            hard_logits = _drop(hard_logits, _hard_negative_is_positive(
                query_key, all_query_key, all_document_key, tf.reshape(all_hard_key, [-1]), is_positive))
        columns.append(hard_logits)
    if same_tower in ("query", "both"):
        if distributed:
            query_query = tf.matmul(scaled_query, all_queries, transpose_b=True)
        else:
            query_query = _scaled_self_similarity(query, inverse_temperature)
        columns.append(_drop_self(query_query, is_excluded, offset))
    loss = samtone_objective(positive_logit, columns)

    if bidirectional:
        if distributed:
            document_query = tf.matmul(document * inverse_temperature, all_queries, transpose_b=True)
        else:  # one device: s(p_i, q_j) = s(q_j, p_i), no second product
            document_query = tf.transpose(query_document)
        columns = [_drop(document_query, is_excluded)]
        if same_tower in ("document", "both"):
            if distributed:
                document_document = tf.matmul(document * inverse_temperature, all_documents, transpose_b=True)
            else:
                document_document = _scaled_self_similarity(document, inverse_temperature)
            columns.append(_drop_self(document_document, is_excluded, offset))
        loss += samtone_objective(positive_logit, columns)
    return loss


def matryoshka_dimensions(full_dimension, dimensions, weights=None):
    """The prefixes a Matryoshka loss is taken at: `dimensions` with the full dimension always added, largest first,
    and their weights (default 1 each; given, one per prefix in that order). -> ([d...], [w...])."""
    dimensions = sorted({int(d) for d in dimensions} | {int(full_dimension)}, reverse=True)
    bad = [d for d in dimensions if not 0 < d <= full_dimension]
    if bad:
        raise ValueError(f"matryoshka dimensions must be in 1..{full_dimension} (the embedding's); got {bad}")
    if weights is None:
        weights = [1.0] * len(dimensions)
    weights = [float(w) for w in weights]
    if len(weights) != len(dimensions):
        raise ValueError(f"{len(weights)} matryoshka weights for {len(dimensions)} dimensions {dimensions} (the full "
                         "dimension included, largest first)")
    if any(not w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"matryoshka weights must be non-negative, one of them positive; got {weights}")
    return dimensions, weights


def matryoshka_samtone_loss(query, document, hard_negatives=None, *, dimensions, weights=None, **options):
    """Per-example Matryoshka SamToNe loss [B]: the weighted sum of `samtone_loss` on the embeddings' prefixes of
    each of `dimensions` (the full dimension always included, as given; a shorter prefix re-normalised to unit
    length, as a truncated embedding is served). Every `samtone_loss` option applies at every prefix (same-tower
    side, bidirectional, hard negatives, id masks), and each prefix's loss is exact across replicas as
    `samtone_loss` is. query, document: [B, D]; hard_negatives: [B, H, D] or None."""
    query = _as_float32(query)
    full = query.shape[-1]
    if full is None:
        raise ValueError("matryoshka_samtone_loss needs the embedding dimension known statically")
    dimensions, weights = matryoshka_dimensions(full, dimensions, weights)

    def prefix(x, d):
        if x is None or d == full:
            return x
        return tf.math.l2_normalize(_as_float32(x)[..., :d], axis=-1)

    total = 0.0
    for d, w in zip(dimensions, weights):
        if w:
            total += w * samtone_loss(prefix(query, d), prefix(document, d), prefix(hard_negatives, d), **options)
    return total


def samtone_objective(positive_logit, logit_blocks):
    """The SamToNe objective of one direction, per row, over blocks of logits (similarity / temperature).

    Moiseev et al., "SamToNe: Improving Contrastive Loss for Dual Encoder Retrieval Models with Same Tower
    Negatives", ACL 2023 Findings (arXiv 2306.02516), Eq. 2, for query q_i and its positive document p_i:

        L_i = -log  e^{s(q_i,p_i)/t} / ( sum_j e^{s(q_i,p_j)/t}  +  sum_{j != i} e^{s(q_i,q_j)/t} )
                                         cross-tower block          same-tower block

    (hard negatives add a block sum_k e^{s(q_i,h_k)/t}; the document-side direction swaps the roles of
    q and p). Excluded entries of a block (the row itself in a same-tower block, rows sharing an id) are
    -inf, so they add e^{-inf} = 0. The positive logit is one of the cross-tower block's entries.

    Args:
      positive_logit: float [B], s(q_i, p_i) / t.
      logit_blocks: list of float [B, n_b] blocks whose concatenation is the denominator's terms.
    Returns:
      float [B]: logsumexp over all blocks minus the positive logit (= L_i).
    """
    # logsumexp block by block: concatenating the blocks would copy every logit forward and backward.
    row_max = tf.reduce_max(logit_blocks[0], axis=1)
    for block in logit_blocks[1:]:
        row_max = tf.maximum(row_max, tf.reduce_max(block, axis=1))
    # A shift, not part of the function: no gradient (as in tf.reduce_logsumexp); 0 for an all -inf row.
    shift = tf.stop_gradient(tf.where(tf.math.is_finite(row_max), row_max, tf.zeros_like(row_max)))
    total = tf.add_n([tf.reduce_sum(tf.exp(block - shift[:, None]), axis=1) for block in logit_blocks])
    return tf.math.log(total) + shift - positive_logit


# --- helpers -----------------------------------------------------------------


def check_options(same_tower, bidirectional, temperature):
    if same_tower not in SAME_TOWER_SIDES:
        raise ValueError(
            f"same_tower must be one of {SAME_TOWER_SIDES}; got {same_tower!r}"
        )
    if same_tower in ("document", "both") and not bidirectional:
        raise ValueError(
            f"same_tower={same_tower!r} adds documents to the document->query softmax, "
            "which exists only with bidirectional=True"
        )
    static = temperature if isinstance(temperature, (int, float)) else tf.get_static_value(temperature)
    if static is not None and not float(static) > 0.0:
        raise ValueError(f"temperature must be positive; got {float(static)}")


def _as_float32(x):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise ValueError(f"embeddings must be floating point; got {x.dtype.name}")
    return tf.cast(x, tf.float32)


def _check_shapes(query, document, hard_negatives, query_ids, document_ids, hard_negative_ids=None):
    if query.shape.rank != 2:
        raise ValueError(f"query must have rank 2 [B, D]; got shape {query.shape}")
    if document.shape.rank != 2:
        raise ValueError(f"document must have rank 2 [B, D]; got shape {document.shape}")
    batch, dim = query.shape
    if not _compatible(document.shape[0], batch):
        raise ValueError(
            f"document batch {document.shape[0]} does not match query batch {batch}"
        )
    if not _compatible(document.shape[1], dim):
        raise ValueError(
            f"document dimension {document.shape[1]} does not match query dimension {dim}"
        )
    if hard_negatives is not None:
        if hard_negatives.shape.rank != 3:
            raise ValueError(
                f"hard_negatives must have rank 3 [B, H, D]; got shape {hard_negatives.shape}"
            )
        if not _compatible(hard_negatives.shape[0], batch):
            raise ValueError(
                f"hard_negatives batch {hard_negatives.shape[0]} does not match query batch {batch}"
            )
        if not _compatible(hard_negatives.shape[2], dim):
            raise ValueError(
                f"hard_negatives dimension {hard_negatives.shape[2]} does not match "
                f"query dimension {dim}"
            )
    for name, ids in (("query_ids", query_ids), ("document_ids", document_ids)):
        if ids is None:
            continue
        shape = tf.convert_to_tensor(ids).shape
        if shape.rank != 1:
            raise ValueError(f"{name} must have rank 1 [B]; got shape {shape}")
        if not _compatible(shape[0], batch):
            raise ValueError(f"{name} length {shape[0]} does not match query batch {batch}")
    if hard_negative_ids is not None:
        shape = tf.convert_to_tensor(hard_negative_ids).shape
        if hard_negatives is None:
            raise ValueError("hard_negative_ids were given without hard_negatives")
        if document_ids is None:
            raise ValueError("hard_negative_ids need document_ids, the ids they are compared with")
        if shape.rank != 2 or not _compatible(shape[0], batch) or not _compatible(shape[1],
                                                                                  hard_negatives.shape[1]):
            raise ValueError(f"hard_negative_ids must be [B, H] = [{batch}, {hard_negatives.shape[1]}]; "
                             f"got shape {shape}")
        if tf.convert_to_tensor(hard_negative_ids).dtype.is_integer != tf.convert_to_tensor(
                document_ids).dtype.is_integer:
            raise ValueError("hard_negative_ids and document_ids must be of one kind (both integers or both "
                             "strings)")


def _compatible(a, b):
    return a is None or b is None or a == b


def _id_key(name, ids):
    """Ids as int64 keys that can be gathered across replicas (strings are hashed), or None."""
    if ids is None:
        return None
    ids = tf.convert_to_tensor(ids)
    if ids.dtype == tf.string:
        ids = id_fingerprints(ids)
    elif not ids.dtype.is_integer:
        raise ValueError(f"{name} must be integers or strings; got {ids.dtype.name}")
    return tf.cast(ids, tf.int64)


def id_fingerprints(ids):
    """String ids -> the int64 keys the loss compares (64-bit fingerprints: a collision inside one batch is
    ~B^2 / 2^64). Input pipelines apply it on the host so that a compiled step sees no string."""
    return tf.strings.to_hash_bucket_fast(ids, 2**63 - 1)


def _shared_id_mask(local_keys, global_keys, is_positive):
    """[B, G] True where global row j != i shares a query or document id with row i."""
    shared = tf.zeros_like(is_positive)
    for local, everyone in zip(local_keys, global_keys):
        if local is not None:
            shared |= tf.equal(local[:, None], everyone[None, :])
    return shared & tf.logical_not(is_positive)


def _hard_negative_is_positive(query_key, all_query_key, all_document_key, hard_key, is_positive):
    """[B, G*H] True where hard negative k is the positive document of row i or of a row
    sharing row i's query id."""
    same_query = is_positive  # [B, G]
    if query_key is not None:
        same_query |= tf.equal(query_key[:, None], all_query_key[None, :])
    is_that_document = tf.equal(all_document_key[:, None], hard_key[None, :])  # [G, G*H]
    hits = tf.matmul(tf.cast(same_query, tf.float32), tf.cast(is_that_document, tf.float32))
    return hits > 0


def gather_across_replicas(query, document, hard_negatives=None, query_key=None, document_key=None,
                           hard_key=None):
    """Every replica's rows, concatenated in replica order, and this replica's first row in them.

    Outside a multi-replica context the inputs come back as they are with offset 0. Local batches
    may differ between replicas (a last partial batch, uneven shards, an empty replica): the offset
    is the sum of the local sizes of the replicas before this one. Gradients flow back through
    all_gather: each replica receives the sum, over replicas, of the gradients for its own rows.

    -> (queries [G, D], documents [G, D], hard negatives [G, H, D] or None, query keys [G] or None,
        document keys [G] or None, hard-negative keys [G, H] or None, offset: int32 scalar)
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return query, document, hard_negatives, query_key, document_key, hard_key, tf.constant(0, tf.int32)

    def gather(x):
        # tf.identity places the value on this replica's device: all_gather takes its
        # destination from the tensor's device, and a function input has none.
        return None if x is None else context.all_gather(tf.identity(x), axis=0)

    local_sizes = gather(tf.shape(query)[:1])  # [replicas]
    offset = tf.reduce_sum(local_sizes[: context.replica_id_in_sync_group])
    return (gather(query), gather(document), gather(hard_negatives), gather(query_key), gather(document_key),
            gather(hard_key), offset)


@tf.custom_gradient
def _scaled_self_similarity(x, scale):
    """scale * x @ x^T [B, B] for a scalar scale; the product is symmetric, so its gradient with respect to x
    is one product, (G + G^T) @ (scale * x), where autodiff would spend two."""
    scaled = x * scale
    similarity = tf.matmul(scaled, x, transpose_b=True)

    def grad(upstream):
        return (tf.matmul(upstream + tf.transpose(upstream), scaled),
                tf.reduce_sum(upstream * similarity) / scale)

    return similarity, grad


def _drop(logits, mask):
    """Removes masked entries from a softmax by setting their logits to -inf (mask None: nothing)."""
    if mask is None:
        return logits
    return tf.where(mask, tf.constant(float("-inf"), logits.dtype), logits)


def _drop_self(same_tower_logits, is_excluded, offset):
    """[B, G] same-tower logits without row i's own column (offset + i) and the masked ones: a diagonal
    write instead of a [B, G] mask."""
    logits = _drop(same_tower_logits, is_excluded)
    rows = tf.shape(logits)[0]
    return tf.linalg.set_diag(logits, tf.fill([rows], tf.constant(float("-inf"), logits.dtype)), k=offset)
