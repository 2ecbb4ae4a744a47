"""python -m samtone_tf.train: train a dual encoder with SamToNe under tf.distribute.

With no arguments it trains the embedded default: all-MiniLM-L6-v2 (from
../shared/models) on ReQA pairs from SQuAD v1.1 train, with query-side SamToNe,
on one CPU in under 10 minutes, and prints P@1 and MRR on data it did not train
on (held-out SQuAD articles, WikiQA test) before and after training.

model_dir receives: config.json (the resolved configuration), checkpoints (every
--checkpoint_every steps; a killed run started again with the same command
resumes from the last one), logs/ (TensorBoard), metrics.jsonl, model.keras
(the trained model) and export/ (servable SavedModels; see export/README.md).
"""

from __future__ import annotations

import argparse
import sys

from samtone_tf.cli import (HelpFormatter, add_verbose, comma_list, command_errors, fail, non_negative_float,
                            non_negative_int, positive_float, positive_int, quiet_native_logs)
from samtone_tf.options import ARCHITECTURES, OPTIMIZERS, POOLINGS, PRECISIONS, SAME_TOWER_SIDES, STRATEGIES
from samtone_tf.training.config import DEFAULT_DATASET, TrainConfig
from samtone_tf.training.run_dir import RunLockedError
from samtone_tf.training_run import DEFAULT_EVALUATION, negatives_per_query, run_training  # noqa: F401
from samtone_tf.version import __version__


def build_parser():
    """The command's options. Long because: one option per line, grouped as `--help` shows them."""
    parser = argparse.ArgumentParser(
        prog="python -m samtone_tf.train", description=__doc__,
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULT_DATASET,
                      help="training data: reqa:squad, beir:<name>, msmarco:<dir>, wikiqa, flagembedding:<file>")
    data.add_argument("--train_split", default="train", help="the split to train on")
    data.add_argument("--max_train_pairs", type=non_negative_int, default=None,
                      help="train on N pairs drawn at random (seeded by --seed) from the whole file; default (or 0): "
                           "every pair. Either way the pairs are shuffled each epoch and cycled for --steps")
    data.add_argument("--first_train_pairs", type=positive_int, default=None,
                      help="train on the first N pairs in file order instead, reading no further (quick runs on a "
                           f"large file). Default: none, except for the embedded default run ({DEFAULT_DATASET} "
                           "with neither option: steps x batch size, as its README numbers were measured)")
    data.add_argument("--eval_datasets", default=",".join(DEFAULT_EVALUATION),
                      help="comma-separated evaluation sets (dataset names; 'name@split' picks a split); "
                           "'' for none")
    data.add_argument("--data_dir", default=None, help="benchmark data (default: $SAMTONE_DATA, then ../shared/data)")
    data.add_argument("--unique_ids", action=argparse.BooleanOptionalAction, default=True,
                      help="keep every global batch free of repeated query or document ids")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default="all-MiniLM-L6-v2",
                       help="a local Hugging Face checkpoint (name under --models_dir, or a path); 'tiny' "
                            "(2 layers, width 32, random: for tests); 'config:<json or file>' (BertBackbone "
                            "arguments, random init); 'preset:<keras_hub preset>' (downloads)")
    model.add_argument("--models_dir", default=None, help="default: $SAMTONE_MODELS, then ../shared/models")
    model.add_argument("--vocabulary", default=None,
                       help="WordPiece vocabulary for 'tiny' and 'config:' models (default: the default "
                            "checkpoint's vocab.txt)")
    model.add_argument("--num_layers", type=positive_int, default=None,
                       help="keep only the first N transformer layers of the checkpoint (default: all)")
    model.add_argument("--architecture", default="sde", choices=ARCHITECTURES,
                       help="sde: one tower; ade: two; ade_spl: shared projection; ade_ste: shared token "
                            "embeddings; ade_fte: frozen token embeddings")
    model.add_argument("--projection_dim", type=positive_int, default=None,
                       help="projection after pooling (ade_spl defaults it to the backbone width)")
    model.add_argument("--pooling", default=None, choices=POOLINGS, help="default: the checkpoint's")
    model.add_argument("--query_max_length", type=positive_int, default=32, help="query tokens kept")
    model.add_argument("--document_max_length", type=positive_int, default=64, help="document tokens kept")

    loss = parser.add_argument_group("loss")
    loss.add_argument("--same_tower", default="query", choices=SAME_TOWER_SIDES,
                      help="SamToNe: which tower's other members join the negatives ('none': standard loss)")
    loss.add_argument("--bidirectional", action="store_true", help="add the document->query softmax")
    loss.add_argument("--temperature", type=positive_float, default=0.05, help="softmax temperature")
    loss.add_argument("--matryoshka_dims", type=comma_list(positive_int), default=None, metavar="D,D,...",
                      help="Matryoshka: add the loss at these prefixes of the embedding (re-normalised), e.g. "
                           "256,128,64; the full dimension is always included (default: the full dimension only)")
    loss.add_argument("--matryoshka_weights", type=comma_list(non_negative_float), default=None, metavar="W,W,...",
                      help="the prefixes' weights, the full dimension's first, then largest to smallest "
                           "(default: equal)")
    loss.add_argument("--learnable_temperature", action="store_true",
                      help="learn the temperature (log scale, clipped to [0.01, 1.0]), starting at --temperature")
    model.add_argument("--dropout", type=non_negative_float, default=None,
                       help="dropout rate of the towers (default: the checkpoint's; 0 turns it off)")
    loss.add_argument("--hard_negatives", type=non_negative_int, default=0, help="hard negatives per pair (from the data)")

    optimization = parser.add_argument_group("optimization")
    optimization.add_argument("--batch_size", type=positive_int, default=32,
                              help="GLOBAL batch size; each replica gets batch_size / replicas")
    optimization.add_argument("--gradient_cache_chunk", type=positive_int, default=None,
                              help="gradient caching: encode this many rows of a replica's batch at a time (the "
                                   "same loss and gradients, activation memory of one chunk: much larger batches "
                                   "fit; default: off)")
    optimization.add_argument("--length_groups", type=positive_int, default=8,
                              help="encode a training batch in this many groups of rows of similar length, each cut "
                                   "to its longest row (the same embeddings and gradients; fewer token positions on "
                                   "mixed lengths, a fixed cost per group: at small per-replica batches of similar "
                                   "lengths fewer may be faster, depending on the CPU); 1: the batch whole")
    optimization.add_argument("--mixed_precision", default="none", choices=PRECISIONS,
                              help="bf16: TPUs, recent GPUs (Ampere+), CPUs with AVX-512 BF16 or AMX (elsewhere it is "
                                   "emulated and slow; a warning says so); fp16: GPUs, with dynamic loss scaling. "
                                   "Variables, checkpoints, the loss and exported embeddings stay float32")
    optimization.add_argument("--jit_compile", action="store_true",
                              help="compile with XLA (token lengths bucketed to multiples of 32 so that it compiles "
                                   "once per bucket; the log counts the compilations): the whole replica step on one "
                                   "device and on TPUs; under --strategy mirrored or multi_worker the towers' networks, "
                                   "forward and backward (the loss's cross-replica gathers stay outside XLA)")
    optimization.add_argument("--steps", type=positive_int, default=50, help="training steps")
    optimization.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS, help="the optimizer")
    optimization.add_argument("--learning_rate", type=positive_float, default=3e-5, help="peak learning rate")
    optimization.add_argument("--warmup_steps", type=non_negative_int, default=None, help="default: 10%% of --steps")
    optimization.add_argument("--weight_decay", type=non_negative_float, default=0.01, help="AdamW only")
    optimization.add_argument("--seed", type=non_negative_int, default=0,
                              help="fixes the data order and the initialisation of new weights")

    run = parser.add_argument_group("run")
    run.add_argument("--strategy", default="default", choices=STRATEGIES,
                     help="tf.distribute strategy")
    run.add_argument("--cpu_replicas", type=positive_int, default=None,
                     help="split the CPU into N logical devices (mirrored strategy without GPUs)")
    run.add_argument("--tpu", default=None, help="TPU name or address (strategy tpu)")
    run.add_argument("--model_dir", default="runs/default",
                     help="where the run writes; the same command on it again resumes")
    run.add_argument("--checkpoint_every", type=positive_int, default=10, help="save a checkpoint every N steps")
    run.add_argument("--eval_every", type=non_negative_int, default=0,
                     help="evaluate every N steps (0: before and after only)")
    run.add_argument("--log_every", type=positive_int, default=10, help="log every N steps")
    run.add_argument("--eval_batch_size", type=positive_int, default=128, help="texts per encoding batch")
    run.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                     help="write servable SavedModels to model_dir/export when training ends")
    add_verbose(run)
    return parser


def resolve_config(args):
    """The parsed options as a validated TrainConfig (defaults resolved)."""
    values = dict(vars(args))
    values.pop("verbose", None)
    if values["max_train_pairs"] == 0:
        values["max_train_pairs"] = None
    if values["max_train_pairs"] is not None and values["first_train_pairs"] is not None:
        raise ValueError("pass --max_train_pairs (a sample of the whole file) or --first_train_pairs (its head), "
                         "not both")
    if values["dataset"] == DEFAULT_DATASET and values["max_train_pairs"] is None \
            and values["first_train_pairs"] is None:
        # The embedded default: segmenting all of SQuAD train takes ~100 s, longer than its 50 steps need.
        values["first_train_pairs"] = values["steps"] * values["batch_size"]
    values["samtone_tf_version"] = __version__
    return TrainConfig.from_dict(values)


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_native_logs(args.verbose)
    try:
        return run_training(resolve_config(args))
    except (*command_errors(), RunLockedError) as error:
        return fail(error)
    except KeyboardInterrupt:
        return fail("interrupted; run the same command again to resume from the last checkpoint", 130)


if __name__ == "__main__":
    sys.exit(main())
