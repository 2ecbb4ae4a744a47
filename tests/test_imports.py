"""The house's layers: every module imports only modules of lower layers (so no cycles), no command imports
another command, and the benchmarks import only the library."""

import ast

import pytest

from samtone_tf.locations import REPOSITORY_ROOT

PACKAGE = REPOSITORY_ROOT / "samtone_tf"

# Lowest first. A module may import modules of lower layers only.
LAYERS = [
    {"locations", "atomic", "distributed", "encoding", "losses", "metrics", "text", "torch_checkpoint", "cli",
     "data", "data.errors", "data.ids", "optimizers", "version"},
    {"keras_loss", "ownership", "provenance", "index", "partitioned", "run_dir", "data.textfiles", "data.records",
     "data.sentences"},
    {"mining", "index_tuning", "embedding_shards"},
    {"towers", "training", "retrieval", "data.beir", "data.flagembedding", "data.msmarco", "data.multireqa",
     "data.squad", "data.wikiqa", "data.pipeline"},
    {"pretrained", "serving", "data.datasets", "data.tfds_builders", "beam_corpus"},
    {"models", "beam_encoding"},
    {"training_run", "analysis"},
    {"train", "evaluate", "export", "analyze", "mine", "encode", "index.__main__", "data.__main__"},  # the commands
]
COMMANDS = LAYERS[-1]
# The package root sets TensorFlow's environment, re-exports the loss and registers the Keras classes a saved
# model.keras names: any module may import it, and it imports only these.
ROOT_IMPORTS = {"losses", "keras_loss", "optimizers", "text", "towers", "training", "version"}


def module_name(path):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, known):
    """The package's modules `path` imports (at any depth: function-level imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "samtone_tf":
                found.add("")
            elif name.startswith("samtone_tf."):
                name = name[len("samtone_tf."):]
                if name in known:
                    found.add(name)
    return found


def test_every_module_has_a_layer():
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    layered = set().union(*LAYERS)
    assert modules - {""} == layered, f"unlayered: {sorted(modules - {''} - layered)}; gone: {sorted(layered - modules)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_only_down(path):
    known = set().union(*LAYERS)
    name = module_name(path)
    imports = imported_modules(path, known) - {""}
    if name == "":
        assert imports <= ROOT_IMPORTS, f"the package root imports {sorted(imports - ROOT_IMPORTS)}"
        return
    layer = next(i for i, modules in enumerate(LAYERS) if name in modules)
    upward = sorted(m for m in imports if next(i for i, ms in enumerate(LAYERS) if m in ms) >= layer)
    assert not upward, f"{name} (layer {layer}) imports {upward}, which are not below it"


@pytest.mark.parametrize("path", sorted((REPOSITORY_ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_import_only_the_library(path):
    imports = imported_modules(path, set().union(*LAYERS))
    assert not imports & COMMANDS, f"{path.name} imports the command module(s) {sorted(imports & COMMANDS)}"
