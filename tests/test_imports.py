"""The house's layers, as the tree shows them:

  ground    small modules every part may use (options, atomic files, the loss, encoding, metrics, data/), in
            floors: a ground module imports only ground modules of lower floors;
  folders   model/, training/, index/, beam/: self-contained concerns, each importing only ground modules and
            modules of its own folder, never another folder;
  joining   the modules that join folders (serving, retrieval, mining, models, training_run, analysis), in floors;
  commands  the `python -m samtone_tf.X` modules, importing anything but another command.

Nothing imports the package root (it only sets TensorFlow's environment, re-exports the loss and registers the
Keras classes), and the benchmarks import only the library."""

import ast

import pytest

from samtone_tf.locations import REPOSITORY_ROOT

PACKAGE = REPOSITORY_ROOT / "samtone_tf"

GROUND = [  # lowest floor first
    {"options", "version", "locations", "atomic", "encoding", "metrics", "data", "data.errors", "data.ids"},
    {"cli", "losses", "ownership", "provenance", "data.records", "data.sentences", "data.textfiles"},
    {"keras_loss", "embedding_shards", "data.beir", "data.flagembedding", "data.msmarco", "data.multireqa",
     "data.pipeline", "data.squad", "data.wikiqa"},
    {"data.datasets", "data.tfds_builders"},
]
FOLDERS = ("model", "training", "index", "beam")
JOINING = [  # lowest floor first
    {"serving", "retrieval", "mining"},
    {"models", "training_run"},
    {"analysis"},
]
COMMANDS = {"train", "evaluate", "export", "analyze", "mine", "encode", "index.__main__", "data.__main__"}
# The package root imports only these (the registration of the classes a saved model.keras names, the loss it
# re-exports, the environment and the version).
ROOT_IMPORTS = {"options", "version", "keras_loss", "losses", "model", "model.text", "model.towers", "training",
                "training.optimizers"}


def module_name(path):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(path):
    """The package's modules `path` imports (at any depth: function-level imports count); "" is the root."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        if isinstance(node, ast.ImportFrom) and node.module == "samtone_tf":
            # `from samtone_tf import metrics` imports a module; `from samtone_tf import SamToNeLoss`, the root.
            names = [name for name in names[1:] if name[len("samtone_tf."):] in MODULES] or ["samtone_tf"]
        for name in names:
            if name == "samtone_tf":
                found.add("")
            elif name.startswith("samtone_tf.") and name[len("samtone_tf."):] in MODULES:
                found.add(name[len("samtone_tf."):])
    return found


def folder_of(name):
    top = name.split(".")[0]
    return top if top in FOLDERS and name not in COMMANDS else None


def floor(name, floors):
    return next((i for i, modules in enumerate(floors) if name in modules), None)


def test_every_module_has_one_place():
    placed = set().union(*GROUND, *JOINING, COMMANDS)
    in_folders = {name for name in MODULES if folder_of(name)}
    modules = set(MODULES) - {""}
    assert modules == placed | in_folders, (f"unplaced: {sorted(modules - placed - in_folders)}; "
                                            f"gone: {sorted(placed - modules)}")
    assert not placed & in_folders


def layering_problem(name, imports):
    """What is wrong with module `name` importing `imports` (None: nothing)."""
    imports = set(imports) - {name}
    if name == "":
        return f"the package root imports {sorted(imports - ROOT_IMPORTS)}" if imports - ROOT_IMPORTS else None
    if "" in imports:
        return f"{name} imports the package root (import what it needs from its module)"
    if name in COMMANDS:
        return f"the command {name} imports the command(s) {sorted(imports & COMMANDS)}" if imports & COMMANDS else None
    if folder_of(name):
        outside = sorted(m for m in imports if folder_of(m) != folder_of(name) and floor(m, GROUND) is None)
        return f"{name} (in {folder_of(name)}/) imports {outside}: neither ground nor its own folder" if outside else None
    if floor(name, GROUND) is not None:
        level = floor(name, GROUND)
        upward = sorted(m for m in imports if floor(m, GROUND) is None or floor(m, GROUND) >= level)
        return f"the ground module {name} (floor {level}) imports {upward}, which are not below it" if upward else None
    level = floor(name, JOINING)
    upward = sorted(m for m in imports if m in COMMANDS or (floor(m, JOINING) if floor(m, JOINING) is not None
                                                            else -1) >= level)
    return f"the joining module {name} (floor {level}) imports {upward}, which are not below it" if upward else None


@pytest.mark.parametrize("name", sorted(MODULES), ids=lambda name: name or "__init__")
def test_imports_follow_the_layers(name):
    problem = layering_problem(name, imported_modules(MODULES[name]))
    assert problem is None, problem


def test_the_rule_catches_each_kind_of_wrong_import():
    assert "neither ground nor its own folder" in layering_problem("model.towers", {"training.step"})
    assert "neither ground nor its own folder" in layering_problem("index.search", {"serving"})
    assert layering_problem("model.builder", {"model.towers", "options"}) is None
    assert "not below it" in layering_problem("losses", {"model.towers"})
    assert "not below it" in layering_problem("atomic", {"cli"})
    assert "package root" in layering_problem("serving", {""})
    assert "not below it" in layering_problem("serving", {"training_run"})
    assert layering_problem("training_run", {"serving", "training.step", "data.datasets"}) is None
    assert "command" in layering_problem("train", {"evaluate"})
    assert layering_problem("index.__main__", {"serving", "index.tuning"}) is None


def test_no_import_cycle_inside_a_folder():
    graph = {name: {m for m in imported_modules(path) if folder_of(m) == folder_of(name)}
             for name, path in MODULES.items() if folder_of(name)}
    done, visiting = set(), []

    def visit(name):
        if name in done:
            return
        assert name not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(name):] + [name])}"
        visiting.append(name)
        for dependency in graph[name] - {name}:
            visit(dependency)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


@pytest.mark.parametrize("path", sorted((REPOSITORY_ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_import_only_the_library(path):
    imports = imported_modules(path)
    assert not imports & COMMANDS, f"{path.name} imports the command module(s) {sorted(imports & COMMANDS)}"
