"""Dataset names, as the command lines take them, resolved to readers.

    reqa:squad            SQuAD v1.1 as ReQA: train -> pairs, dev -> evaluation
    reqa:squad2           SQuAD v2.0 dev as ReQA (unanswerable questions skipped)
    reqa:<file.json>      any SQuAD-format file (v1.1 or v2.0)
    multireqa:squad       MultiReQA's official SQuAD dev candidates
    wikiqa                WikiQA (train -> pairs, test/dev -> evaluation)
    beir:<name or dir>    a BEIR-layout directory: beir/<name>, classic/<name>,
                          msmarco/<name> under the data directory, or a path
    msmarco:<dir>         MS MARCO passage files (collection, queries, qrels, triples)
    flagembedding:<file>  query/pos/neg JSONL (training only)

Relative paths are looked up under the data directory (--data_dir, then
$SAMTONE_DATA, then ../shared/data).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from samtone_tf.data import beir, flagembedding, msmarco, multireqa, squad, wikiqa
from samtone_tf.locations import data_dir as find_data_dir

KINDS = ("reqa", "multireqa", "wikiqa", "beir", "msmarco", "flagembedding")

SQUAD_FILES = {
    "squad": {"train": ("squad/train-v1.1.json", "squad/train-v1.1.reconstructed.json"),
              "dev": ("squad/dev-v1.1.json",)},
    "squad2": {"dev": ("squad/dev-v2.0.json", "squad/dev-v2.0.rebuilt.json")},
}
DEFAULT_EVALUATION_SPLIT = {"reqa": "dev", "multireqa": "dev", "wikiqa": "test", "beir": "test",
                            "msmarco": "dev"}


def parse_name(name):
    """"kind:argument" -> (kind, argument); "wikiqa" -> ("wikiqa", "")."""
    kind, _, argument = name.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown dataset {name!r}: the kind must be one of {', '.join(KINDS)}")
    if kind not in ("wikiqa",) and not argument:
        raise ValueError(f"dataset {name!r} needs an argument, e.g. {kind}:<name or path>")
    return kind, argument


def load_evaluation(name, split=None, data_directory=None):
    """The evaluation set `name` (see module doc) -> RetrievalData."""
    kind, argument = parse_name(name)
    split = split or DEFAULT_EVALUATION_SPLIT.get(kind)
    root = _root(data_directory)
    if kind == "reqa":
        return squad.reqa_evaluation(_squad_file(root, argument, split), name=name, split=split)
    if kind == "multireqa":
        if argument != "squad" and not Path(argument).is_dir():
            raise ValueError(f"multireqa: only 'squad' (or a directory) is available, got {argument!r}")
        directory = Path(argument) if Path(argument).is_dir() else root / "multireqa" / "squad-dev"
        return multireqa.multireqa_evaluation(directory, name=name, split=split)
    if kind == "wikiqa":
        return wikiqa.wikiqa_evaluation(_wikiqa_file(root, argument, split), name=name, split=split)
    if kind == "beir":
        return beir.read_beir(beir_directory(argument, root), split=split, name=name)
    if kind == "msmarco":
        return msmarco.read_msmarco(_path(root, argument), split=split, name=name)
    raise ValueError(f"{name}: {kind} datasets are for training only")


def load_training_pairs(name, split="train", data_directory=None, max_pairs=None, sample=None, seed=0):
    """Training pairs of `name` -> list of TrainingPair, or StreamedPairs for large files (all of them).

    `max_pairs` keeps the first pairs in file order (ReQA then reads only what it needs); `sample` draws that many
    pairs uniformly from the whole file instead (seeded by `seed`; kept in file order: the training pipeline
    shuffles them), reading the file once and holding only the sample.
    """
    if max_pairs is not None and sample is not None:
        raise ValueError("pass either max_pairs (the first pairs) or sample (pairs drawn from the whole file)")
    pairs = _training_pairs(name, split, data_directory, max_pairs)
    if sample is not None:
        return sample_pairs(pairs, sample, seed)
    if max_pairs is None:
        return pairs
    return list(itertools.islice(pairs, max_pairs))


def sample_pairs(pairs, size, seed=0):
    """`size` pairs drawn uniformly without replacement from `pairs` (a list, or an iterable read once by reservoir
    sampling), in their original order; all of them when there are no more than `size`."""
    import numpy as np

    rng = np.random.default_rng([seed, 104_729])
    if isinstance(pairs, list):
        if size >= len(pairs):
            return list(pairs)
        return [pairs[int(i)] for i in np.sort(rng.choice(len(pairs), size, replace=False))]
    reservoir = []  # (position in the file, pair): the sample is returned in file order
    for position, pair in enumerate(pairs):
        if position < size:
            reservoir.append((position, pair))
            continue
        slot = int(rng.integers(position + 1))
        if slot < size:
            reservoir[slot] = (position, pair)
    return [pair for _, pair in sorted(reservoir, key=lambda item: item[0])]


def _training_pairs(name, split, data_directory, max_pairs):
    kind, argument = parse_name(name)
    root = _root(data_directory)
    if kind == "reqa":
        return squad.reqa_training_pairs(_squad_file(root, argument, split), max_pairs=max_pairs)
    if kind == "wikiqa":
        return wikiqa.wikiqa_training_pairs(_wikiqa_file(root, argument, split))
    if kind == "beir":
        return beir.read_beir_training_pairs(beir_directory(argument, root), split=split)
    if kind == "msmarco":
        return msmarco.msmarco_training_pairs(_path(root, argument), split=split)
    if kind == "flagembedding":
        return flagembedding.flagembedding_training_pairs(_path(root, argument))
    raise ValueError(f"{name}: no training split for {kind} datasets")


def beir_directory(argument, root):
    direct = Path(argument)
    candidates = [direct] if direct.is_absolute() else [root / argument] + [
        root / group / argument for group in ("beir", "classic", "msmarco")
    ]
    for candidate in candidates:
        if (candidate / "corpus.jsonl").is_file():
            return candidate
    raise FileNotFoundError(
        f"beir:{argument}: no corpus.jsonl in {', '.join(str(c) for c in candidates)}"
    )


def _root(data_directory):
    return Path(find_data_dir(data_directory))


def _path(root, argument):
    path = Path(argument)
    return path if path.is_absolute() or path.exists() else root / argument


def _squad_file(root, argument, split):
    if argument in SQUAD_FILES:
        files = SQUAD_FILES[argument].get(split)
        if files is None:
            raise ValueError(f"reqa:{argument} has no {split!r} split "
                             f"(available: {', '.join(SQUAD_FILES[argument])})")
        for relative in files:
            if (root / relative).is_file():
                return root / relative
        raise FileNotFoundError(f"reqa:{argument} {split}: none of {', '.join(str(root / f) for f in files)}")
    return _path(root, argument)


def _wikiqa_file(root, argument, split):
    if argument:
        return _path(root, argument)
    return root / "wikiqa" / f"WikiQA-{split}.tsv"
