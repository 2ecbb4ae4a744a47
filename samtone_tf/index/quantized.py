"""Cheaper corpus embeddings: a prefix of the dimensions (Matryoshka), int8 scalar codes or binary (sign) codes, each
searched exactly, with optional rescoring of a shortlist at full precision.

    float32  the prefix, re-normalised (as `losses.matryoshka_samtone_loss` trains it): 4 bytes per dimension
    int8     per-dimension ranges calibrated on the corpus (its minimum and maximum of each dimension), 255 steps
             each: 1 byte per dimension (4x less). Scored asymmetrically (as FAISS's SQ8): the float query against
             the decoded codes, q . (low + step * code), so only the corpus is quantized
    binary   the sign of each dimension, 8 per byte (32x less); the query binarised too, scored by Hamming distance
             (XOR and population count): -distance

With `rescore` K, the codes shortlist K candidates per query and the float32 prefix re-scores them (the
sentence-transformers and Gemini Embedding recipe): the ranking of the shortlist is then exact, and only the
shortlist needs the float embeddings (which may stay on disk, memory-mapped).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from samtone_tf.options import CODE_PRECISIONS

BLOCK = 16_384  # corpus rows scored at a time: memory stays at query_batch x BLOCK scores


def normalized_prefix(embeddings, dims):
    """[N, D] -> [N, dims] float32: the first `dims` dimensions at unit length (the full D as given)."""
    embeddings = np.asarray(embeddings, np.float32)
    if dims is None or dims == embeddings.shape[1]:
        return embeddings
    prefix = embeddings[:, :dims]
    norms = np.linalg.norm(prefix, axis=1, keepdims=True)
    return prefix / np.maximum(norms, 1e-12)


def calibrate_int8(embeddings):
    """Per-dimension (low [D], step [D]) over `embeddings` [N, D]: code = round((x - low) / step) in 0..255."""
    low, high = embeddings.min(axis=0), embeddings.max(axis=0)
    step = np.maximum(high - low, 1e-12) / 255.0
    return low.astype(np.float32), step.astype(np.float32)


def int8_codes(embeddings, low, step):
    """[N, D] -> int8 [N, D] (stored offset by -128 so they fit a signed byte, as int8 indexes do)."""
    codes = np.clip(np.rint((embeddings - low) / step), 0, 255)
    return (codes - 128).astype(np.int8)


def binary_codes(embeddings):
    """[N, D] -> uint8 [N, ceil(D / 8)]: bit i is dimension i > 0."""
    return np.packbits(np.asarray(embeddings) > 0, axis=1)


def reranked(queries, embeddings, rows, k):
    """(rows [Q, k], float32 scores [Q, k]): candidate `rows` [Q, C] of `queries` [Q, D] re-ranked by their dot
    product with `embeddings` [N, D] (memory-mapped is fine: only the candidates' rows are read); stable, so ties
    keep the candidates' order."""
    exact = np.einsum("qd,qkd->qk", queries, np.asarray(embeddings[rows.reshape(-1)]).reshape(*rows.shape, -1))
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(rows, order, 1), np.take_along_axis(exact, order, 1).astype(np.float32)


class QuantizedIndex:
    """Exact search over a prefix and a precision of corpus embeddings: `search(query_embeddings [Q, D], k) ->
    (doc_ids [Q, k], scores [Q, k])`, the scores the codes' (or, with `rescore`, the float32 prefix's)."""

    def __init__(self, embeddings, doc_ids, dims=None, precision="float32", rescore=None, query_batch=1024):
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or len(doc_ids) != embeddings.shape[0]:
            raise ValueError(f"embeddings [N, D] with one doc id per row; got {embeddings.shape} and "
                             f"{len(doc_ids)} ids")
        full = embeddings.shape[1]
        if dims is not None and not 0 < int(dims) <= full:
            raise ValueError(f"dims must be in 1..{full} (the embeddings'); got {dims}")
        if precision not in CODE_PRECISIONS:
            raise ValueError(f"precision must be one of {CODE_PRECISIONS}; got {precision!r}")
        if rescore is not None and int(rescore) < 1:
            raise ValueError(f"rescore must be a positive number of candidates; got {rescore}")
        self.dims = int(dims) if dims is not None else full
        self.dimension = full  # the embeddings' (and the queries'): the codes hold its first `dims`
        self.precision, self.rescore, self.query_batch = precision, rescore and int(rescore), int(query_batch)
        self.doc_ids = np.asarray(doc_ids, dtype=object)
        self.prefix = normalized_prefix(embeddings, self.dims)  # the float32 the codes are made of, and rescoring
        if precision == "int8":
            self.low, self.step = calibrate_int8(self.prefix)
            self.codes = int8_codes(self.prefix, self.low, self.step)
        elif precision == "binary":
            self.codes = binary_codes(self.prefix)
        else:
            self.codes = self.prefix

    def __len__(self):
        return len(self.doc_ids)

    @property
    def code_bytes(self):
        """Bytes of the codes the search reads (the index's memory without rescoring)."""
        return int(self.codes.nbytes) + (int(self.low.nbytes + self.step.nbytes) if self.precision == "int8" else 0)

    def describe(self):
        return {"dims": self.dims, "precision": self.precision, "rescore": self.rescore,
                "code_bytes": self.code_bytes}

    MANIFEST, DOC_IDS = "manifest.json", "doc_ids.json"
    ARRAYS = ("codes", "low", "step", "prefix")  # each written as <name>.npy where the index has it

    def write_files(self, directory):
        """The codes (and the calibration, and the float32 prefix when rescoring reads it) as .npy files, the document
        ids and the manifest (kind "codes"), into `directory`."""
        directory = Path(directory)
        kept = ["codes"] + (["low", "step"] if self.precision == "int8" else []) + (
            ["prefix"] if self.rescore and self.precision != "float32" else [])
        for name in kept:
            np.save(directory / f"{name}.npy", getattr(self, name), allow_pickle=False)
        (directory / self.DOC_IDS).write_text(json.dumps([str(d) for d in self.doc_ids]), encoding="utf-8")
        manifest = dict(kind="codes", size=len(self), dimension=self.dimension, doc_ids=self.DOC_IDS,
                        arrays=kept, calibration="per-dimension minimum and maximum over the corpus, 255 steps"
                        if self.precision == "int8" else None, **self.describe())
        (directory / self.MANIFEST).write_text(json.dumps(manifest, indent=1))

    @classmethod
    def load(cls, directory, mmap=True):
        """What `write_files` wrote: arrays memory-mapped, never unpickled; files that disagree are refused."""
        from samtone_tf.locations import file_inside

        directory = Path(directory)
        try:
            manifest = json.loads(file_inside(directory, cls.MANIFEST, "manifest").read_text(encoding="utf-8"))
            if manifest.get("kind") != "codes" or manifest.get("precision") not in CODE_PRECISIONS:
                raise ValueError(f"kind {manifest.get('kind')!r}, precision {manifest.get('precision')!r}")
            doc_ids = json.loads(file_inside(directory, cls.DOC_IDS, "document ids file").read_text(encoding="utf-8"))
            arrays = {name: np.load(file_inside(directory, f"{name}.npy", f"{name} file"),
                                    mmap_mode="r" if mmap else None, allow_pickle=False)
                      for name in manifest["arrays"] if name in cls.ARRAYS}
            index = cls.__new__(cls)
            index.dims, index.dimension = int(manifest["dims"]), int(manifest["dimension"])
            index.precision, index.rescore = manifest["precision"], manifest.get("rescore")
            index.query_batch, index.doc_ids = 1024, np.asarray([str(d) for d in doc_ids], dtype=object)
            index.codes = arrays["codes"]
            index.prefix = arrays.get("prefix", index.codes if index.precision == "float32" else None)
            if index.precision == "int8":
                index.low, index.step = arrays["low"], arrays["step"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{directory}: not a readable samtone_tf codes index "
                             f"({type(error).__name__}: {error})") from None
        if len(index.codes) != manifest["size"] or len(index.doc_ids) != manifest["size"] or (
                index.rescore and index.prefix is None):
            raise ValueError(f"{directory}: {len(index.codes)} codes and {len(index.doc_ids)} doc ids disagree with "
                             f"the manifest ({manifest['size']} documents)")
        return index

    def code_scores(self, queries, start, stop):
        """float32 [Q, stop - start] scores of prefix `queries` [Q, dims] against corpus rows start..stop."""
        block = self.codes[start:stop]
        if self.precision == "float32":
            return queries @ block.T
        if self.precision == "int8":
            # q . (low + step * (code + 128)) = q . low + (q * step) . (code + 128)
            decoded = block.astype(np.float32) + 128.0
            return (queries @ self.low)[:, None] + (queries * self.step) @ decoded.T
        query_bits = binary_codes(queries)
        distance = np.empty((len(queries), len(block)), np.float32)
        for first in range(0, len(queries), 64):  # [64, rows, bytes] of XORs at a time
            xor = query_bits[first:first + 64, None, :] ^ block[None, :, :]
            distance[first:first + 64] = np.bitwise_count(xor).sum(axis=2, dtype=np.int32)
        return -distance

    def search(self, query_embeddings, k=10):
        queries = np.asarray(query_embeddings, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"query embeddings must be [Q, {self.dimension}]; got shape {queries.shape}")
        queries = normalized_prefix(queries, self.dims)
        k = min(int(k), len(self))
        depth = max(k, min(self.rescore or k, len(self)))
        rows_out, scores_out = [], []
        for first in range(0, len(queries), self.query_batch):
            batch = queries[first:first + self.query_batch]
            rows, scores = self._top(batch, depth)
            if self.rescore:
                rows, scores = reranked(batch, self.prefix, rows, k)
            rows_out.append(rows[:, :k])
            scores_out.append(scores[:, :k].astype(np.float32))
        rows = np.concatenate(rows_out) if rows_out else np.zeros((0, k), np.int64)
        scores = np.concatenate(scores_out) if scores_out else np.zeros((0, k), np.float32)
        return self.doc_ids[rows], scores

    def _top(self, queries, depth):
        """The `depth` best rows by code score per query, best first (ties: corpus order), blockwise."""
        best_rows = best_scores = None
        for start in range(0, len(self), BLOCK):
            scores = self.code_scores(queries, start, min(start + BLOCK, len(self)))
            rows = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
            if best_rows is not None:
                scores, rows = np.concatenate([best_scores, scores], 1), np.concatenate([best_rows, rows], 1)
            take = min(depth, scores.shape[1])
            # Stable on (-score, row): equal scores keep corpus order, as the exact index does.
            order = np.lexsort((rows, -scores), axis=1)[:, :take]
            best_rows, best_scores = np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)
        return best_rows, best_scores
