"""docs/RESULTS.md shows every results file of docs/results/ as a table (rendered by benchmarks/tables.py)."""

import importlib.util

import pytest

from samtone_tf.locations import REPOSITORY_ROOT

RESULTS = REPOSITORY_ROOT / "docs" / "results"


def _tables():
    spec = importlib.util.spec_from_file_location("tables", REPOSITORY_ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_results_file_is_shown_by_a_table(path):
    document = (REPOSITORY_ROOT / "docs" / "RESULTS.md").read_text()
    rows = [line for line in _tables().render(path).splitlines() if line.startswith("|")]
    assert len(rows) >= 3, f"{path.name}: no table rendered"
    missing = [row for row in rows if row not in document.splitlines()]
    assert not missing, f"docs/RESULTS.md lacks {len(missing)} table rows of {path.name}, e.g. {missing[:3]}"
