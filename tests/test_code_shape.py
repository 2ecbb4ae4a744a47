"""Short functions: none in samtone_tf/ over 80 lines unless its docstring says why ("Long because: ...")."""

import ast

import pytest

from samtone_tf.locations import REPOSITORY_ROOT

LIMIT = 80
PACKAGE = REPOSITORY_ROOT / "samtone_tf"


def long_functions_without_a_reason(source):
    """[(name, lines)] of the functions in `source` longer than LIMIT lines whose docstring gives no reason."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > LIMIT and "Long because:" not in (ast.get_docstring(node) or ""):
                found.append((node.name, length))
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_long_function_without_a_stated_reason(path):
    assert not long_functions_without_a_reason(path.read_text()), (
        f"{path.name}: split these, or say why not in the docstring ('Long because: ...'): "
        f"{long_functions_without_a_reason(path.read_text())}")


def test_the_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    assert long_functions_without_a_reason(f"def f():\n{body}\n") == [("f", LIMIT + 1)]
    assert long_functions_without_a_reason(f'def f():\n    """Long because: a table."""\n{body}\n') == []
