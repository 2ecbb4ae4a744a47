"""The paper's analysis of how a model's two towers share the embedding space: t-SNE of both towers'
embeddings, histograms of top-1 cosine similarities (each query's nearest document and nearest other query),
and the ratio of the mean query-query to the mean query-document similarity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from samtone_tf.atomic import atomic_write_text


def sample(data, max_queries, seed):
    """Up to `max_queries` judged queries and their relevant documents."""
    rng = np.random.default_rng(seed)
    query_ids = [q for q in data.queries if any(g > 0 for g in data.qrels[q].values())]
    if len(query_ids) > max_queries:
        query_ids = [query_ids[i] for i in sorted(rng.choice(len(query_ids), max_queries, replace=False))]
    doc_ids = list(dict.fromkeys(d for q in query_ids for d, g in data.qrels[q].items() if g > 0))
    return query_ids, doc_ids


def similarity_statistics(queries, documents):
    """Numbers of the analysis from L2-normalised query [Q, D] and document [N, D] embeddings."""
    query_query = queries @ queries.T
    np.fill_diagonal(query_query, np.nan)
    mean_qq = float(np.nanmean(query_query))
    mean_qd = float(np.mean(queries @ documents.T))
    top1_document, top1_query = top1_similarities(queries, documents)
    return {
        "queries": len(queries),
        "documents": len(documents),
        "mean_query_query_similarity": mean_qq,
        "mean_query_document_similarity": mean_qd,
        "query_query_to_query_document_ratio": mean_qq / mean_qd if mean_qd else float("nan"),
        "mean_top1_query_document_similarity": float(np.mean(top1_document)),
        "mean_top1_query_query_similarity": float(np.mean(top1_query)),
        "centroid_cosine": float(_cosine(queries.mean(axis=0), documents.mean(axis=0))),
    }


def top1_similarities(queries, documents):
    """For each query [Q]: the cosine of its nearest document, and of its nearest other query."""
    query_query = queries @ queries.T
    np.fill_diagonal(query_query, -np.inf)
    return np.max(queries @ documents.T, axis=1), np.max(query_query, axis=1)


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def tsne_points(queries, documents, seed):
    from sklearn.manifold import TSNE

    points = np.concatenate([queries, documents])
    perplexity = float(min(30, max(5, (len(points) - 1) // 3)))
    return TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity,
                random_state=seed).fit_transform(points)


def plot_tsne(points, query_count, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 6))
    axes.scatter(points[query_count:, 0], points[query_count:, 1], s=6, alpha=0.6, c="tab:orange",
                 label="documents (document tower)")
    axes.scatter(points[:query_count, 0], points[:query_count, 1], s=6, alpha=0.6, c="tab:blue",
                 label="queries (query tower)")
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(loc="upper right", fontsize=8, markerscale=3)
    figure.tight_layout()
    _save_figure(figure, path)


def plot_top1(top1_document, top1_query, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    bins = np.linspace(-0.2, 1.0, 61)
    axes.hist(top1_document, bins=bins, alpha=0.6, label="query → nearest document")
    axes.hist(top1_query, bins=bins, alpha=0.6, label="query → nearest other query")
    axes.set_xlabel("top-1 cosine similarity")
    axes.set_ylabel("queries")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    _save_figure(figure, path)


def _save_figure(figure, path):
    import matplotlib.pyplot as plt

    staging = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(staging, dpi=110)
    plt.close(figure)
    staging.replace(path)


def analyze(model_path, dataset, out, split=None, max_queries=500, seed=0, data_dir=None, title=None):
    """Runs the analysis and writes tsne.png, top1_similarity.png and analysis.json to `out`."""
    from samtone_tf.data.datasets import load_evaluation
    from samtone_tf.models import load_encoder

    encoder = load_encoder(model_path)
    data = load_evaluation(dataset, split, data_dir)
    query_ids, doc_ids = sample(data, max_queries, seed)
    queries = encoder.encode_queries([data.queries[q] for q in query_ids], verbose=False)
    documents = encoder.encode_documents([data.document_text(d) for d in doc_ids], verbose=False)
    numbers = similarity_statistics(queries, documents)
    numbers.update(model=str(model_path), dataset=dataset, split=data.split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"{Path(model_path).name} on {dataset}"
    plot_tsne(tsne_points(queries, documents, seed), len(queries), f"t-SNE, {title}", out / "tsne.png")
    plot_top1(*top1_similarities(queries, documents), f"Top-1 similarities, {title}", out / "top1_similarity.png")
    atomic_write_text(out / "analysis.json", json.dumps(numbers, indent=1))
    return numbers
