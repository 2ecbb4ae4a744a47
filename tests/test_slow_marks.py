"""The fast loop (`python -m pytest -m "not slow"`) leaves out every test that starts a subprocess: such a test
carries the `slow` mark (on itself or its module). Found by reading the tests: a test that names subprocess,
Popen, sys.executable or CommandInBackground, itself, through a function of its module or through a fixture of
its module that does."""

import ast

import pytest

from samtone_tf.locations import REPOSITORY_ROOT

SIGNS = {"subprocess", "Popen", "executable", "CommandInBackground"}
TESTS = sorted((REPOSITORY_ROOT / "tests").glob("test_*.py"))


def _names(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def unmarked_subprocess_tests(source):
    """The names of the tests in `source` that start a subprocess and are not marked slow."""
    tree = ast.parse(source)
    if any(isinstance(n, ast.Assign) and "pytestmark" in _names(n) and "slow" in ast.unparse(n) for n in tree.body):
        return []
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    starts = {name: bool(_names(f) & SIGNS) for name, f in functions.items()}
    calls = {name: _names(f) & set(functions) for name, f in functions.items()}
    changed = True
    while changed:  # through the module's own helpers and fixtures
        changed = False
        for name in functions:
            if not starts[name] and any(starts[c] for c in calls[name] | {a.arg for a in functions[name].args.args}
                                        if c in starts):
                starts[name] = changed = True
    return [name for name, f in functions.items() if name.startswith("test_") and starts[name]
            and not any("slow" in ast.unparse(d) for d in f.decorator_list)]


@pytest.mark.parametrize("path", TESTS, ids=lambda p: p.name)
def test_every_test_that_starts_a_subprocess_is_marked_slow(path):
    unmarked = unmarked_subprocess_tests(path.read_text())
    assert not unmarked, f"{path.name}: mark these @pytest.mark.slow (they start subprocesses): {unmarked}"


def test_the_check_finds_a_test_that_starts_a_subprocess_through_a_helper():
    source = ("import subprocess\nimport pytest\n\ndef run():\n    subprocess.run(['true'])\n\n"
              "def test_a():\n    run()\n\n@pytest.mark.slow\ndef test_b():\n    run()\n\ndef test_c():\n    pass\n")
    assert unmarked_subprocess_tests(source) == ["test_a"]
