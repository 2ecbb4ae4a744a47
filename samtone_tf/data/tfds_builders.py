"""TensorFlow Datasets builders: `reqa_squad` and `beir`.

Both prepare from a manual directory (e.g. the files in ../shared/data) or, on a
machine with internet, from the official download locations. Every split shares
one record schema:

    id          query, candidate or document id
    title       document title ("" for queries)
    text        query text, candidate sentence or document text
    context     the candidate's paragraph (ReQA) or ""
    document    for ReQA training pairs: the positive sentence, else ""
    relevant    judgements: a sequence of {"id", "score"} ([] for documents)

reqa_squad splits: train (one record per answerable training question, with its
positive sentence), dev (evaluation questions), dev_candidates (sentences).
beir/<name> splits: corpus, and one split per qrels file (test, train, dev).

    import tensorflow_datasets as tfds
    from samtone_tf.data import tfds_builders  # registers the builders
    builder = tfds_builders.Beir(config="scifact", data_dir=...)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from samtone_tf.data import beir, squad

SQUAD_URLS = {
    "train": "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
    "dev": "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json",
}
# The manual directory may hold the official names or the names in ../shared/data/squad.
SQUAD_MANUAL_NAMES = {
    "train": ("train-v1.1.json", "squad/train-v1.1.json", "train-v1.1.reconstructed.json",
              "squad/train-v1.1.reconstructed.json"),
    "dev": ("dev-v1.1.json", "squad/dev-v1.1.json"),
}
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
BEIR_CONFIGS = ("scifact", "nfcorpus", "arguana", "fiqa", "trec-covid", "scidocs", "quora",
                "cranfield", "medline", "cacm", "npl")
CUSTOM_CONFIG = "custom"  # any BEIR-layout directory given as the manual directory; no download


def _features():
    text = tfds.features.Text()
    return tfds.features.FeaturesDict({
        "id": text, "title": text, "text": text, "context": text, "document": text,
        "relevant": tfds.features.Sequence({"id": text, "score": tfds.features.Scalar(np.int32)}),
    })


def _record(id, text, title="", context="", document="", relevant=()):  # noqa: A002
    return {"id": id, "title": title, "text": text, "context": context, "document": document,
            "relevant": [{"id": i, "score": s} for i, s in relevant]}


def _manual_dir(dl_manager):
    try:
        return Path(dl_manager.manual_dir)
    except (AssertionError, ValueError):
        return None


class ReqaSquad(tfds.core.GeneratorBasedBuilder):
    """ReQA SQuAD (MultiReQA's SQuAD task): questions retrieve answer sentences."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "pysbd sentences; identical sentences merged into one candidate."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place train-v1.1.json (or train-v1.1.reconstructed.json) and dev-v1.1.json in the manual "
        "directory, or a squad/ folder holding them (e.g. ../shared/data)."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            features=_features(), homepage="https://github.com/google/retrieval-qa-eval",
            description="SQuAD v1.1 as sentence-level retrieval (Ahmad et al., 2019; Guo et al., 2021).",
        )

    def _split_generators(self, dl_manager):
        manual = _manual_dir(dl_manager)
        paths = {}
        for split, names in SQUAD_MANUAL_NAMES.items():
            found = [manual / n for n in names if manual and (manual / n).is_file()]
            paths[split] = found[0] if found else Path(dl_manager.download(SQUAD_URLS[split]))
        return {
            "train": self._generate_examples(self._train_records(paths["train"])),
            "dev": self._generate_examples(self._dev_query_records(paths["dev"])),
            "dev_candidates": self._generate_examples(self._dev_candidate_records(paths["dev"])),
        }

    def _generate_examples(self, records):
        yield from records

    def _train_records(self, path):
        for pair in squad.reqa_training_pairs(path):
            yield pair.query_id, _record(pair.query_id, pair.query, document=pair.document,
                                         relevant=[(pair.document_id, 1)])

    def _dev_query_records(self, path):
        data = squad.reqa_evaluation(path)
        for query_id, text in data.queries.items():
            yield query_id, _record(query_id, text, relevant=sorted(data.qrels[query_id].items()))

    def _dev_candidate_records(self, path):
        data = squad.reqa_evaluation(path)
        for candidate_id, (_, sentence) in data.corpus.items():
            yield candidate_id, _record(candidate_id, sentence, context=data.contexts[candidate_id])


class BeirConfig(tfds.core.BuilderConfig):
    pass


class Beir(tfds.core.GeneratorBasedBuilder):
    """BEIR retrieval sets (Thakur et al., 2021) in BEIR layout."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "corpus and qrels splits in one record schema."}
    BUILDER_CONFIGS = [BeirConfig(name=name, description=f"BEIR {name}") for name in BEIR_CONFIGS] + [
        BeirConfig(name=CUSTOM_CONFIG, description="a BEIR-layout directory given as the manual directory")
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the dataset's BEIR directory (corpus.jsonl, queries.jsonl, qrels/) in the manual "
        "directory, as <name>/ or beir/<name>/ or classic/<name>/ (e.g. ../shared/data), or the "
        "directory itself."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            features=_features(), homepage="https://github.com/beir-cellar/beir",
            description="A BEIR retrieval set: documents, queries and graded judgements.",
        )

    def _split_generators(self, dl_manager):
        name = self.builder_config.name
        manual = _manual_dir(dl_manager)
        directory = None
        if manual:
            for candidate in (manual, manual / name, manual / "beir" / name, manual / "classic" / name):
                if (candidate / "corpus.jsonl").is_file():
                    directory = candidate
                    break
        if directory is None:
            if name == CUSTOM_CONFIG:
                raise ValueError("beir/custom prepares only from a manual directory in BEIR layout")
            directory = Path(dl_manager.download_and_extract(BEIR_URL.format(name=name))) / name
        generators = {"corpus": self._generate_examples(self._corpus_records(directory))}
        for split in beir.splits(directory):
            generators[split] = self._generate_examples(self._query_records(directory, split))
        return generators

    def _generate_examples(self, records):
        yield from records

    def _corpus_records(self, directory):
        corpus, _ = beir.read_corpus(directory / "corpus.jsonl")
        for doc_id, (title, text) in corpus.items():
            yield doc_id, _record(doc_id, text, title=title)

    def _query_records(self, directory, split):
        data = beir.read_beir(directory, split)
        for query_id, text in data.queries.items():
            yield query_id, _record(query_id, text, relevant=sorted(data.qrels[query_id].items()))
