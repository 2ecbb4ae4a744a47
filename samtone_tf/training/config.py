"""`TrainConfig`: every setting of a training run (the options of `python -m samtone_tf.train`, same names),
validated, with its JSON round trip."""

from __future__ import annotations

import dataclasses
import json

from samtone_tf.options import ARCHITECTURES, OPTIMIZERS, POOLINGS, PRECISIONS, SAME_TOWER_SIDES, STRATEGIES
from samtone_tf.training.optimizers import WarmupLinearDecay

ID_KEYS = ("query_id", "document_id", "hard_negative_ids")  # the ids the loss masks with, not model inputs
DEFAULT_DATASET = "reqa:squad"


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run (the options of `python -m samtone_tf.train`, same names)."""

    dataset: str = DEFAULT_DATASET
    train_split: str = "train"
    max_train_pairs: int | None = None  # a seeded sample of this many pairs from the whole file; None: all pairs
    first_train_pairs: int | None = None  # the first pairs in file order instead (read lazily); None: see above
    eval_datasets: list = dataclasses.field(default_factory=list)
    data_dir: str | None = None
    unique_ids: bool = True
    model: str = "all-MiniLM-L6-v2"
    models_dir: str | None = None
    vocabulary: str | None = None
    num_layers: int | None = None
    architecture: str = "sde"
    projection_dim: int | None = None
    pooling: str | None = None
    query_max_length: int = 32
    document_max_length: int = 64
    same_tower: str = "query"
    bidirectional: bool = False
    temperature: float = 0.05
    learnable_temperature: bool = False
    hard_negatives: int = 0
    dropout: float | None = None  # None: the checkpoint's rate
    gradient_cache_chunk: int | None = None  # None: no gradient caching
    matryoshka_dims: list | None = None  # the loss also at these embedding prefixes (the full dimension always)
    matryoshka_weights: list | None = None  # one per prefix, the full dimension first, largest first; None: equal
    length_groups: int = 8  # rows of similar length encoded together (DualEncoder(length_groups)); 1: batch whole
    mixed_precision: str = "none"  # "bf16" or "fp16": Keras mixed-precision policies
    jit_compile: bool = False  # the replica step compiled with XLA
    batch_size: int = 32
    steps: int = 50
    optimizer: str = "adamw"
    learning_rate: float = 3e-5
    warmup_steps: int | None = None  # None: 10% of steps
    weight_decay: float = 0.01
    seed: int = 0
    strategy: str = "default"
    cpu_replicas: int | None = None
    tpu: str | None = None
    model_dir: str = "runs/default"
    checkpoint_every: int = 10
    eval_every: int = 0
    log_every: int = 10
    eval_batch_size: int = 128
    export: bool = True
    samtone_tf_version: str | None = None

    def __post_init__(self):
        if self.warmup_steps is None and isinstance(self.steps, int):
            self.warmup_steps = max(1, self.steps // 10)
        if isinstance(self.eval_datasets, str):
            self.eval_datasets = [name for name in self.eval_datasets.split(",") if name]
        problems = []
        for name in ("query_max_length", "document_max_length", "batch_size", "steps", "checkpoint_every",
                     "log_every", "eval_batch_size", "length_groups"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        for name in ("hard_negatives", "eval_every", "seed", "warmup_steps"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                problems.append(f"{name} must be a non-negative integer; got {getattr(self, name)!r}")
        if self.dropout is not None and not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            problems.append(f"dropout must be in [0, 1); got {self.dropout!r}")
        for name in ("max_train_pairs", "first_train_pairs", "num_layers", "projection_dim", "cpu_replicas",
                     "gradient_cache_chunk"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                problems.append(f"{name} must be a positive integer or None; got {value!r}")
        if self.matryoshka_dims is not None and (not isinstance(self.matryoshka_dims, (list, tuple)) or not all(
                _is_int(d) and d > 0 for d in self.matryoshka_dims)):
            problems.append(f"matryoshka_dims must be a list of positive integers; got {self.matryoshka_dims!r}")
        if self.matryoshka_weights is not None and (not self.matryoshka_dims or not isinstance(
                self.matryoshka_weights, (list, tuple)) or not all(isinstance(w, (int, float)) and w >= 0
                                                                   for w in self.matryoshka_weights)):
            problems.append("matryoshka_weights must be non-negative numbers, with matryoshka_dims; got "
                            f"{self.matryoshka_weights!r}")
        if self.max_train_pairs is not None and self.first_train_pairs is not None:
            problems.append("max_train_pairs (a sample of the whole file) and first_train_pairs (its head) exclude "
                            "each other")
        for name in ("temperature", "learning_rate"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                problems.append(f"{name} must be positive; got {getattr(self, name)!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            problems.append(f"weight_decay must be non-negative; got {self.weight_decay!r}")
        for name, allowed in (("architecture", ARCHITECTURES), ("same_tower", SAME_TOWER_SIDES),
                              ("optimizer", OPTIMIZERS), ("strategy", STRATEGIES), ("pooling", (None, *POOLINGS)),
                              ("mixed_precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")
        if self.same_tower in ("document", "both") and not self.bidirectional:
            problems.append(f"same_tower {self.same_tower!r} needs bidirectional")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, values):
        """The configuration of `values` (e.g. a run's config.json); keys it does not know are ignored, so
        configurations written by other versions still load."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    @property
    def schedule(self):
        return WarmupLinearDecay(self.learning_rate, self.warmup_steps, self.steps)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)

