"""Nearest-neighbour search over corpus embeddings: exact (TensorFlow) and ScaNN.

Both indexes answer `search(query_embeddings [Q, D], k) -> (doc_ids [Q, k], scores [Q, k])`
by dot product (cosine for the towers' L2-normalised embeddings).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from samtone_tf.index.quantized import normalized_prefix, reranked
from samtone_tf.locations import file_inside, is_inside


class ExactIndex:
    """Brute-force search: batched matrix products and top-k, corpus streamed in blocks.

    The corpus embeddings are held as a NumPy array (which may be a np.memmap of a file
    larger than memory); each search multiplies a batch of queries with one block of
    the corpus at a time and merges the running top-k, so memory stays at
    query_batch x block_size scores.
    """

    def __init__(self, embeddings, doc_ids, block_size=65_536, query_batch=1_024):
        embeddings = np.asarray(embeddings) if not isinstance(embeddings, np.memmap) else embeddings
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [N, D]; got shape {embeddings.shape}")
        if len(doc_ids) != embeddings.shape[0]:
            raise ValueError(f"{len(doc_ids)} doc_ids for {embeddings.shape[0]} embeddings")
        self.embeddings = embeddings
        self.doc_ids = np.asarray(doc_ids, dtype=object)
        self.block_size = int(block_size)
        self.query_batch = int(query_batch)

    @property
    def dimension(self):
        return self.embeddings.shape[1]

    def __len__(self):
        return self.embeddings.shape[0]

    def search(self, query_embeddings, k=10):
        """-> (doc_ids: object array [Q, k'], scores: float32 [Q, k']), k' = min(k, corpus size),
        best first; equal scores keep corpus order."""
        queries = np.asarray(query_embeddings, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"query embeddings must be [Q, {self.dimension}]; got shape {queries.shape}")
        k = min(int(k), len(self))
        all_scores, all_rows = [], []
        for start in range(0, len(queries), self.query_batch):
            batch = tf.constant(queries[start : start + self.query_batch])
            best_scores = best_rows = None
            for offset in range(0, len(self), self.block_size):
                block = tf.constant(np.asarray(self.embeddings[offset : offset + self.block_size], np.float32))
                scores, rows = _block_top_k(batch, block, tf.constant(min(k, block.shape[0])))
                rows += offset
                if best_scores is None:
                    best_scores, best_rows = scores, rows
                else:
                    best_scores, best_rows = _merge(best_scores, best_rows, scores, rows, k)
            all_scores.append(best_scores.numpy())
            all_rows.append(best_rows.numpy())
        rows = np.concatenate(all_rows) if all_rows else np.zeros((0, k), np.int64)
        scores = np.concatenate(all_scores) if all_scores else np.zeros((0, k), np.float32)
        return self.doc_ids[rows], scores

    MANIFEST = "manifest.json"
    DOC_IDS = "doc_ids.json"
    EMBEDDINGS = "embeddings.npy"

    def save(self, directory):
        """Writes the index to `directory` (which must not exist) via a temporary sibling."""
        from samtone_tf.atomic import atomic_directory

        with atomic_directory(directory) as staging:
            self.write_files(staging)

    def write_files(self, directory):
        """Writes the embeddings (.npy, memory-mappable), the document ids and the manifest into `directory`."""
        import json
        from pathlib import Path

        directory = Path(directory)
        np.save(directory / self.EMBEDDINGS, np.asarray(self.embeddings, np.float32), allow_pickle=False)
        (directory / self.DOC_IDS).write_text(json.dumps([str(d) for d in self.doc_ids]), encoding="utf-8")
        manifest = dict(kind="exact", distance="dot_product", size=len(self), dimension=self.dimension,
                        doc_ids=self.DOC_IDS, embeddings=self.EMBEDDINGS)
        (directory / self.MANIFEST).write_text(json.dumps(manifest, indent=1))

    @classmethod
    def load(cls, directory, mmap=True):
        """Loads what `save` wrote: the embeddings memory-mapped (a corpus larger than memory is searched from
        disk), never unpickled; files that disagree are refused with ValueError."""
        import json
        from pathlib import Path

        directory = Path(directory)
        try:
            manifest = json.loads(file_inside(directory, cls.MANIFEST, "manifest").read_text(encoding="utf-8"))
            if manifest.get("kind") != "exact":
                raise ValueError(f"kind {manifest.get('kind')!r}")
            doc_ids = json.loads(file_inside(directory, cls.DOC_IDS, "document ids file")
                                 .read_text(encoding="utf-8"))
            embeddings = np.load(file_inside(directory, cls.EMBEDDINGS, "embeddings file"),
                                 mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{directory}: not a readable samtone_tf exact index "
                             f"({type(error).__name__}: {error})") from None
        if embeddings.dtype != np.float32 or embeddings.shape != (manifest["size"], manifest["dimension"]) \
                or not isinstance(doc_ids, list) or len(doc_ids) != manifest["size"]:
            raise ValueError(f"{directory}: embeddings {embeddings.dtype} {embeddings.shape} and {len(doc_ids)} "
                             f"doc ids disagree with the manifest ({manifest['size']} x {manifest['dimension']})")
        return cls(embeddings, [str(d) for d in doc_ids])


def load_index(directory):
    """The index saved in `directory` (an `ExactIndex`, a `ScannIndex` or a `QuantizedIndex`, by its manifest's
    kind)."""
    import json
    from pathlib import Path

    path = Path(directory) / ExactIndex.MANIFEST
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: not a samtone_tf index manifest ({type(error).__name__}: {error})") from None
    if kind == "exact":
        return ExactIndex.load(directory)
    if kind == "scann":
        return ScannIndex.load(directory)
    if kind == "codes":
        from samtone_tf.index.quantized import QuantizedIndex

        return QuantizedIndex.load(directory)
    raise ValueError(f"{path}: unknown index kind {kind!r} (expected exact, scann or codes)")


@tf.function(reduce_retracing=True)
def _block_top_k(queries, block, k):
    scores = tf.matmul(queries, block, transpose_b=True)
    values, indices = tf.math.top_k(scores, k=k, sorted=True)
    return values, tf.cast(indices, tf.int64)


@tf.function(reduce_retracing=True)
def _merge(scores_a, rows_a, scores_b, rows_b, k):
    scores = tf.concat([scores_a, scores_b], axis=1)
    rows = tf.concat([rows_a, rows_b], axis=1)
    values, positions = tf.math.top_k(scores, k=k, sorted=True)
    return values, tf.gather(rows, positions, batch_dims=1)


SCANN_BRUTE_FORCE_BELOW = 20_000  # smaller corpora are searched exactly (in ScaNN's brute-force mode)
# k-means points per leaf of a ScaNN tree. With 30 (a common rule) the leaves of a 1M corpus of clustered
# embeddings split its clusters: recall@10 0.95 needed 40+ of 4,000 leaves searched; with 100, 12 (3.5x faster).
SCANN_SAMPLE_PER_LEAF = 100


def scann_training_sample(size, leaves):
    """Rows the k-means of a `leaves`-leaf tree over `size` rows trains on: at least 100,000 (or all)."""
    return int(min(size, max(100_000, SCANN_SAMPLE_PER_LEAF * leaves)))


def scann_defaults(size, dimension):
    """ScaNN settings from the corpus size: about sqrt(N) leaves, ~5-10% of them searched,
    asymmetric hashing with 2 dimensions per block, exact re-ordering of the top candidates."""
    if size < SCANN_BRUTE_FORCE_BELOW:
        return dict(mode="brute_force")
    leaves = int(min(max(size ** 0.5, 100), 4000))
    return dict(
        mode="tree_ah",
        num_leaves=leaves,
        num_leaves_to_search=max(10, leaves // 10),
        training_sample_size=scann_training_sample(size, leaves),
        spherical=True,  # the towers' embeddings are unit vectors: spherical k-means suits them
        dimensions_per_block=2,
        anisotropic_quantization_threshold=0.2,
        reorder=250,
    )


def _configure(builder, settings):
    if settings["mode"] == "brute_force":
        return builder.score_brute_force()
    return (
        builder.tree(num_leaves=settings["num_leaves"], num_leaves_to_search=settings["num_leaves_to_search"],
                     training_sample_size=settings["training_sample_size"],
                     spherical=settings.get("spherical", False))
        .score_ah(settings["dimensions_per_block"],
                  anisotropic_quantization_threshold=settings["anisotropic_quantization_threshold"])
        .reorder(settings["reorder"])
    )


class ScannIndex:
    """Approximate search with ScaNN (Guo et al., 2020) by dot product.

    Settings default to `scann_defaults(N, D)`; pass `settings` to override any.
    `save(dir)` writes the searcher, the document ids and a manifest (atomically);
    `ScannIndex.load(dir)` answers identically.

    With `dims` below the embeddings' dimension D, the searcher holds the first `dims` dimensions re-normalised
    (a Matryoshka prefix: its trees and codes are that much smaller and faster), and its best `rescore`
    candidates (default: the settings' `reorder`) are re-ranked at the full dimension D, whose float32
    embeddings the index keeps (saved as full.npy, memory-mapped when loaded). Queries are always [Q, D].
    """

    MANIFEST = "manifest.json"
    DOC_IDS = "doc_ids.json"
    FULL = "full.npy"

    def __init__(self, embeddings, doc_ids, k=100, settings=None, _searcher=None, dims=None, rescore=None):
        import scann

        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [N, D]; got shape {embeddings.shape}")
        if len(doc_ids) != embeddings.shape[0]:
            raise ValueError(f"{len(doc_ids)} doc_ids for {embeddings.shape[0]} embeddings")
        if dims is not None and not 0 < int(dims) <= embeddings.shape[1]:
            raise ValueError(f"dims must be in 1..{embeddings.shape[1]} (the embeddings'); got {dims}")
        if rescore is not None and int(rescore) < 1:
            raise ValueError(f"rescore must be a positive number of candidates; got {rescore}")
        self.doc_ids = np.asarray(doc_ids, dtype=object)
        self.dimension = embeddings.shape[1]
        self.dims = int(dims) if dims is not None else self.dimension
        self.k = int(k)
        searched = normalized_prefix(embeddings, self.dims)
        self.settings = dict(scann_defaults(*searched.shape), **(settings or {}))
        # The full embeddings re-rank a prefix's candidates; at the full dimension ScaNN's own reordering is exact.
        self.full = embeddings if self.dims < self.dimension else None
        self.rescore = (int(rescore) if rescore else int(self.settings.get("reorder", 100))) if self.full is not None \
            else None
        if _searcher is None:
            builder = scann.scann_ops_pybind.builder(searched, self.k, "dot_product")
            _searcher = _configure(builder, self.settings).build()
        self.searcher = _searcher

    def __len__(self):
        return len(self.doc_ids)

    def search(self, query_embeddings, k=10, leaves_to_search=None, parallel=True, reorder=None, ids=True):
        """-> (doc_ids: object array [Q, k'], scores: float32 [Q, k']), best first.

        The settings' `num_leaves_to_search` and `reorder` (a tuned index's choice: `tune_scann`) apply unless
        `leaves_to_search` or `reorder` override them for this search (recall/speed trade-off without
        rebuilding); `parallel` searches query batches on all cores; `ids=False` returns corpus rows (int64)
        instead of document ids.
        """
        queries = np.asarray(query_embeddings, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"query embeddings must be [Q, {self.dimension}]; got shape {queries.shape}")
        k = min(int(k), len(self))
        depth = max(k, min(self.rescore, len(self))) if self.full is not None else k
        extra = {}
        if self.settings["mode"] != "brute_force":
            extra["pre_reorder_num_neighbors"] = max(int(reorder or self.settings["reorder"]), depth)
            extra["leaves_to_search"] = int(leaves_to_search or self.settings["num_leaves_to_search"])
        search = self.searcher.search_batched_parallel if parallel else self.searcher.search_batched
        rows, scores = search(normalized_prefix(queries, self.dims), final_num_neighbors=depth, **extra)
        rows, scores = np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float32)
        if self.full is not None:
            rows, scores = reranked(queries, self.full, rows, k)
        return (self.doc_ids[rows] if ids else rows), scores

    def save(self, directory):
        """Writes the index to `directory` (which must not exist) via a temporary sibling."""
        from samtone_tf.atomic import atomic_directory

        with atomic_directory(directory) as staging:
            self.write_files(staging)

    def write_files(self, directory):
        """Writes the searcher, the document ids and the manifest into an existing directory."""
        import json
        from pathlib import Path

        directory = Path(directory)
        (directory / "scann").mkdir()
        self.searcher.serialize(str(directory / "scann"), relative_path=True)
        (directory / self.DOC_IDS).write_text(json.dumps([str(d) for d in self.doc_ids]), encoding="utf-8")
        manifest = dict(kind="scann", distance="dot_product", size=len(self), dimension=self.dimension,
                        k=self.k, settings=self.settings, doc_ids=self.DOC_IDS, searcher="scann")
        if self.full is not None:
            np.save(directory / self.FULL, self.full, allow_pickle=False)
            manifest.update(dims=self.dims, rescore=self.rescore, full=self.FULL)
        (directory / self.MANIFEST).write_text(json.dumps(manifest, indent=1))

    @classmethod
    def load(cls, directory):
        """Loads what `save`/`write_files` wrote, and nothing else: document ids from JSON, the searcher from
        ScaNN's assets (arrays and protos), never a pickle. An index directory holding a pickle (which
        ScaNN's own `load_searcher` would unpickle, running any code in it), an asset path leading
        outside the directory, or files that disagree is refused with ValueError."""
        import json
        import re
        from pathlib import Path

        import scann  # noqa: F401  (loads the extension below)
        from scann.scann_ops.py import scann_ops_pybind

        directory = Path(directory)
        pickles = sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                         if p.suffix in (".pkl", ".pickle") or p.name.endswith(".pkl.gz"))
        if pickles:
            raise ValueError(f"{directory}: refusing to load an index holding pickle files ({', '.join(pickles)}); "
                             "samtone_tf never writes them, and unpickling runs code")
        try:
            manifest = json.loads(file_inside(directory, cls.MANIFEST, "manifest").read_text(encoding="utf-8"))
            doc_ids = json.loads(file_inside(directory, manifest["doc_ids"], "document ids file")
                                 .read_text(encoding="utf-8"))
            searcher_dir = (directory / manifest["searcher"]).resolve()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{directory}: not a readable samtone_tf index ({type(error).__name__}: {error})") from None
        if manifest.get("kind") != "scann" or not isinstance(doc_ids, list):
            raise ValueError(f"{directory}: not a samtone_tf ScaNN index")
        assets_path = searcher_dir / "scann_assets.pbtxt"
        if not is_inside(searcher_dir, directory) or not assets_path.is_file():
            raise ValueError(f"{directory}: the searcher {manifest['searcher']!r} is not an index directory inside it")
        assets = assets_path.read_text(encoding="utf-8")
        for asset in re.findall(r'asset_path:\s*"([^"]*)"', assets):
            if not is_inside((searcher_dir / asset).resolve(), searcher_dir):
                raise ValueError(f"{assets_path}: asset {asset!r} lies outside the index directory")
        searcher = scann_ops_pybind.ScannSearcher(scann_ops_pybind.scann_pybind.ScannNumpy(str(searcher_dir), assets))
        index = cls.__new__(cls)
        index.doc_ids = np.asarray([str(d) for d in doc_ids], dtype=object)
        index.dimension = int(manifest["dimension"])
        index.k = int(manifest["k"])
        index.settings = manifest["settings"]
        index.searcher = searcher
        index.dims, index.rescore, index.full = int(manifest.get("dims", index.dimension)), manifest.get("rescore"), None
        if index.dims < index.dimension:
            try:
                index.full = np.load(file_inside(directory, manifest["full"], "full-dimension embeddings file"),
                                     mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(f"{directory}: a {index.dims}-dimension index without its full-dimension "
                                 f"embeddings ({type(error).__name__}: {error})") from None
            if index.full.shape != (len(index.doc_ids), index.dimension) or not index.rescore:
                raise ValueError(f"{directory}: full-dimension embeddings of shape {index.full.shape} (rescore "
                                 f"{index.rescore!r}) for {len(index.doc_ids)} documents of {index.dimension}")
        if len(index.doc_ids) != manifest["size"]:
            raise ValueError(f"{directory}: {len(index.doc_ids)} doc ids for an index of {manifest['size']}")
        return index

    def describe(self):
        """{"dims", "rescore"}: what a prefix index searches (None for the full dimension)."""
        return {"dims": self.dims, "rescore": self.rescore} if self.full is not None else {}

    def tensorflow_searcher(self, embeddings):
        """The same configuration built with ScaNN's TensorFlow ops (`scann.scann_ops`): a
        searcher whose `serialize_to_module()` can live inside a SavedModel, for servers
        built with the ScaNN ops."""
        import scann

        builder = scann.scann_ops.builder(normalized_prefix(embeddings, self.dims), self.k, "dot_product")
        return _configure(builder, self.settings).build()


