"""A dual encoder written as a sentence-transformers model directory, without PyTorch: what
`SentenceTransformer(DIR)` loads offline.

Each tower becomes sentence-transformers' module pipeline: Transformer (a Hugging Face `BertModel`: config.json,
model.safetensors, vocab.txt and tokenizer files), Pooling (mean or CLS, as the tower pools), Dense (the tower's
projection, ADE-SPL's shared one included: no bias, identity activation), then Normalize. Towers that are the same
function (SDE at one length) are written once, at the top of the directory, as Hugging Face checkpoints of
sentence-transformers models are; towers that differ (ADE, ADE-SPL, ADE-STE, ADE-FTE, or one SDE at two lengths)
go behind sentence-transformers' Router, with a `query` and a `document` route (`model.encode_query`,
`model.encode_document`; plain `encode` takes the document route). A shared module (ADE-SPL's projection) is
written once and named by both routes.

The weights are the Keras ones, renamed and transposed as keras_hub's Hugging Face converter reads them
(`bert_state_dict` is its inverse); keras_hub's BERT uses the tanh approximation of GELU, so the config says
`gelu_new`, which is the same function.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
                  "mask_token": "[MASK]"}
ROUTER = "sentence_transformers.base.modules.router.Router"  # sentence-transformers >= 6 (what its Router saves)
ROUTED_TYPES = {"Transformer": "sentence_transformers.base.modules.transformer.Transformer",
                "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
                "Dense": "sentence_transformers.base.modules.dense.Dense"}
TOP_TYPES = {"Transformer": "sentence_transformers.models.Transformer",  # as published checkpoints name them
             "Pooling": "sentence_transformers.models.Pooling", "Dense": "sentence_transformers.models.Dense",
             "Normalize": "sentence_transformers.models.Normalize"}


def bert_state_dict(backbone):
    """{Hugging Face BertModel parameter name: float32 array} of a keras_hub BertBackbone: the inverse of
    keras_hub's converter (kernels transposed to [out, in], attention heads merged back)."""
    def array(variable):
        return np.asarray(variable.numpy(), np.float32)

    def dense(kernel):  # a 2-D kernel, keras [in, out] -> torch [out, in]
        return np.ascontiguousarray(array(kernel).T)

    def attention_in(kernel):  # keras [hidden, heads, head_dim] -> torch [heads * head_dim, hidden]
        k = array(kernel)
        return np.ascontiguousarray(k.reshape(k.shape[0], -1).T)

    def attention_out(kernel):  # keras [heads, head_dim, hidden] -> torch [hidden, heads * head_dim]
        k = array(kernel)
        return np.ascontiguousarray(k.reshape(-1, k.shape[-1]).T)

    weights = {
        "embeddings.word_embeddings.weight": array(backbone.get_layer("token_embedding").embeddings),
        "embeddings.position_embeddings.weight": array(backbone.get_layer("position_embedding").position_embeddings),
        "embeddings.token_type_embeddings.weight": array(backbone.get_layer("segment_embedding").embeddings),
        "embeddings.LayerNorm.weight": array(backbone.get_layer("embeddings_layer_norm").gamma),
        "embeddings.LayerNorm.bias": array(backbone.get_layer("embeddings_layer_norm").beta),
        "pooler.dense.weight": dense(backbone.get_layer("pooled_dense").kernel),
        "pooler.dense.bias": array(backbone.get_layer("pooled_dense").bias),
    }
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"transformer_layer_{i}")
        attention, prefix = block._self_attention_layer, f"encoder.layer.{i}."
        for name, layer in (("query", attention.query_dense), ("key", attention.key_dense),
                            ("value", attention.value_dense)):
            weights[f"{prefix}attention.self.{name}.weight"] = attention_in(layer.kernel)
            weights[f"{prefix}attention.self.{name}.bias"] = array(layer.bias).reshape(-1)
        weights[f"{prefix}attention.output.dense.weight"] = attention_out(attention.output_dense.kernel)
        weights[f"{prefix}attention.output.dense.bias"] = array(attention.output_dense.bias)
        weights[f"{prefix}attention.output.LayerNorm.weight"] = array(block._self_attention_layer_norm.gamma)
        weights[f"{prefix}attention.output.LayerNorm.bias"] = array(block._self_attention_layer_norm.beta)
        weights[f"{prefix}intermediate.dense.weight"] = dense(block._feedforward_intermediate_dense.kernel)
        weights[f"{prefix}intermediate.dense.bias"] = array(block._feedforward_intermediate_dense.bias)
        weights[f"{prefix}output.dense.weight"] = dense(block._feedforward_output_dense.kernel)
        weights[f"{prefix}output.dense.bias"] = array(block._feedforward_output_dense.bias)
        weights[f"{prefix}output.LayerNorm.weight"] = array(block._feedforward_layer_norm.gamma)
        weights[f"{prefix}output.LayerNorm.bias"] = array(block._feedforward_layer_norm.beta)
    return weights


def bert_config(backbone):
    """The Hugging Face config.json of a keras_hub BertBackbone."""
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim, "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads, "intermediate_size": backbone.intermediate_dim,
        "hidden_act": "gelu_new",  # keras_hub's BERT: GELU's tanh approximation
        "hidden_dropout_prob": backbone.dropout, "attention_probs_dropout_prob": backbone.dropout,
        "max_position_embeddings": backbone.max_sequence_length, "type_vocab_size": backbone.num_segments,
        "layer_norm_eps": 1e-12, "initializer_range": 0.02, "pad_token_id": 0,
        "position_embedding_type": "absolute", "use_cache": False,
    }


def _check_supported(model):
    for tower in (model.query_tower, model.document_tower):
        backbone = tower.backbone
        if type(backbone).__name__ != "BertBackbone":
            raise ValueError(f"only BERT-family towers are written as sentence-transformers models; this tower's "
                             f"backbone is a {type(backbone).__name__}")


def _json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _write_transformer(tower, max_length, directory):
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file(bert_state_dict(tower.backbone), str(directory / "model.safetensors"), metadata={"format": "pt"})
    _json(directory / "config.json", bert_config(tower.backbone))
    tokenizer = tower.tokenizer
    (directory / "vocab.txt").write_text("".join(token + "\n" for token in tokenizer.vocabulary), encoding="utf-8")
    # Hugging Face's BertTokenizer strips accents when it lower-cases (strip_accents None), as our tokenizer does.
    _json(directory / "tokenizer_config.json", {"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase,
                                                "strip_accents": None, "tokenize_chinese_chars": True,
                                                "model_max_length": max_length, **SPECIAL_TOKENS})
    _json(directory / "special_tokens_map.json", SPECIAL_TOKENS)
    _json(directory / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})


def _write_pooling(tower, directory):
    _json(directory / "config.json", {
        "word_embedding_dimension": tower.backbone.hidden_dim, "pooling_mode_cls_token": tower.pooling == "cls",
        "pooling_mode_mean_tokens": tower.pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True})


def _write_dense(projection, directory):
    from safetensors.numpy import save_file

    kernel = np.asarray(projection.kernel.numpy(), np.float32)  # [in, out]
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"linear.weight": np.ascontiguousarray(kernel.T)}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    _json(directory / "config.json", {"in_features": int(kernel.shape[0]), "out_features": int(kernel.shape[1]),
                                      "bias": False, "activation_function": "torch.nn.modules.linear.Identity"})


def towers_are_one_function(model):
    """Whether the query and document towers compute the same function (one module pipeline serves both)."""
    return model.architecture == "sde" and model.query_max_length == model.document_max_length


def write_sentence_transformers(model, directory, card=None):
    """Writes `model` (a DualEncoder of BERT-family towers) into `directory` (new or empty) as a
    sentence-transformers model; `card` (str), its README.md. -> the paths of the modules written (list)."""
    _check_supported(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    modules = []
    if towers_are_one_function(model):
        tower, length = model.query_tower, model.query_max_length
        _write_transformer(tower, length, directory)
        modules.append(("", "Transformer"))
        _write_pooling(tower, directory / "1_Pooling")
        modules.append(("1_Pooling", "Pooling"))
        if tower.projection is not None:
            _write_dense(tower.projection, directory / "2_Dense")
            modules.append(("2_Dense", "Dense"))
    else:
        _write_router(model, directory)
        modules.append(("", "Router"))
    normalize = f"{len(modules)}_Normalize"
    (directory / normalize).mkdir()
    _json(directory / normalize / "config.json", {})
    modules.append((normalize, "Normalize"))
    _json(directory / "modules.json", [
        {"idx": i, "name": str(i), "path": path, "type": ROUTER if kind == "Router" else TOP_TYPES[kind]}
        for i, (path, kind) in enumerate(modules)])
    _json(directory / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer", "prompts": {"query": "", "document": ""}, "default_prompt_name": None,
        "similarity_fn_name": "cosine"})
    if card is not None:
        (directory / "README.md").write_text(card, encoding="utf-8")
    return [path for path, _ in modules]


def _write_router(model, directory):
    """The query and document routes; a module both towers share (ADE-SPL's projection) written once."""
    types, structure, written = {}, {}, {}
    for route, tower, length in (("query", model.query_tower, model.query_max_length),
                                 ("document", model.document_tower, model.document_max_length)):
        structure[route] = []
        parts = [("Transformer", tower, lambda d, t=tower, n=length: _write_transformer(t, n, d)),
                 ("Pooling", tower, lambda d, t=tower: _write_pooling(t, d))]
        if tower.projection is not None:
            parts.append(("Dense", tower.projection, lambda d, p=tower.projection: _write_dense(p, d)))
        for index, (kind, owner, write) in enumerate(parts):
            shared = kind == "Dense" and id(owner) in written
            name = written[id(owner)] if shared else f"{route}_{index}_{kind}"
            if not shared:
                write(directory / name)
                types[name] = ROUTED_TYPES[kind]
                if kind == "Dense":
                    written[id(owner)] = name
            structure[route].append(name)
    _json(directory / "router_config.json", {"types": types, "structure": structure, "parameters": {
        "default_route": "document", "allow_empty_key": True, "route_mappings": {}}})


def model_card(model, base_checkpoint=None, training_config=None, metrics=None, paper="arXiv:2306.02516"):
    """README.md of the directory: the base checkpoint, the training data and settings, the loss (with its paper)
    and the run's evaluation metrics."""
    config = training_config or {}
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
             "tags:", "- sentence-transformers", "- samtone_tf", "- dual-encoder", "---", "",
             f"# {model.architecture.upper().replace('_', '-')} dual encoder trained with SamToNe", "",
             "Written by [samtone_tf](https://pypi.org/project/samtone-tf/) (`python -m samtone_tf.export --format "
             "sentence-transformers`) from a TensorFlow/Keras model; loads with sentence-transformers >= 6 without "
             "network.", "",
             "```python", "from sentence_transformers import SentenceTransformer", "",
             "model = SentenceTransformer(\"PATH_TO_THIS_DIRECTORY\")",
             "queries = model.encode_query([\"who wrote hamlet\"])",
             "documents = model.encode_document([\"Hamlet is a tragedy by William Shakespeare.\"])", "```", "",
             "## Model", "",
             f"- Base checkpoint: {base_checkpoint or config.get('model') or 'unknown'}",
             f"- Architecture: {model.architecture} (query max length {model.query_max_length}, document max length "
             f"{model.document_max_length}; embeddings of {model.query_tower.output_dim} dimensions, L2-normalised, "
             "compared by cosine)", ""]
    if config:
        lines += ["## Training", "",
                  f"- Data: {config.get('dataset')} ({config.get('train_split')}), "
                  f"{config.get('steps')} steps of global batch {config.get('batch_size')}",
                  f"- Loss: SamToNe, contrastive loss with same-tower negatives (Moiseev et al., ACL 2023 Findings, "
                  f"{paper}): same_tower={config.get('same_tower')}, bidirectional={config.get('bidirectional')}, "
                  f"temperature {config.get('temperature')}"
                  + (" (learnt)" if config.get("learnable_temperature") else "")
                  + (f", {config.get('hard_negatives')} hard negatives per query" if config.get("hard_negatives")
                     else ""),
                  f"- Optimizer: {config.get('optimizer')}, learning rate {config.get('learning_rate')}, warm-up "
                  f"{config.get('warmup_steps')} steps, weight decay {config.get('weight_decay')}, seed "
                  f"{config.get('seed')}", ""]
    else:
        lines += ["## Training", "", "Not trained by samtone_tf: the base checkpoint's weights.", ""]
    if metrics:
        lines += ["## Evaluation (at the end of training)", "", "| set | metric | value |", "|---|---|---|"]
        for name, result in metrics.items():
            for measure, value in sorted(result.items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    lines.append(f"| {name} | {measure} | {value:.4f} |")
        lines.append("")
    lines += ["## Citation", "", "```bibtex", "@inproceedings{moiseev2023samtone,",
              "  title = {SamToNe: Improving Contrastive Loss for Dual Encoder Retrieval Models with Same Tower "
              "Negatives},", "  author = {Moiseev, Fedor and Hernandez Abrego, Gustavo and Dornbach, Peter and "
              "Zitouni, Imed and Alfonseca, Enrique and Dong, Zhe},",
              "  booktitle = {Findings of the Association for Computational Linguistics: ACL 2023},",
              "  year = {2023}}", "```", ""]
    return "\n".join(lines)

