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


def _anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    import re

    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_document_opens_with_a_summary_whose_links_lead_to_its_sections():
    document = (REPOSITORY_ROOT / "docs" / "RESULTS.md").read_text()
    headings = [line.lstrip("#").strip() for line in document.splitlines() if line.startswith("#")]
    assert headings[:2] == ["Results", "Summary"], headings[:3]
    anchors = {_anchor(heading) for heading in headings}
    summary = document.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 10
    import re

    for row in rows:
        for target in re.findall(r"\]\(([^)]+)\)", row):
            if target.startswith("#"):
                assert target[1:] in anchors, f"the summary links to {target}, which no heading makes"
            else:
                assert (REPOSITORY_ROOT / "docs" / target).is_file(), target


def test_archived_results_files_are_named_by_the_archive_document():
    archive = RESULTS / "archive"
    text = (archive / "RESULTS-superseded.md").read_text()
    for path in archive.glob("*.json"):
        assert f"docs/results/archive/{path.name}" in text, f"{path.name} is archived but the archive never names it"


@pytest.mark.parametrize("path", sorted((RESULTS / "archive").glob("*.json")), ids=lambda p: p.name)
def test_every_archived_results_file_is_shown_by_the_archive(path):
    document = (RESULTS / "archive" / "RESULTS-superseded.md").read_text()
    rows = [line for line in _tables().render(path).splitlines() if line.startswith("|")]
    missing = [row for row in rows if row not in document.splitlines()]
    assert rows and not missing, f"the archive lacks {len(missing)} table rows of {path.name}, e.g. {missing[:3]}"
