"""benchmarks/quality.py's report and run order: what RESULTS quotes about the paper's claim comes from here."""

import importlib.util
import json
import re
import statistics
import sys

import pytest

from samtone_tf.locations import REPOSITORY_ROOT

BENCHMARKS = REPOSITORY_ROOT / "benchmarks"
SETS = [["A", "a", "P@1"], ["B", "b", "nDCG@10"]]


@pytest.fixture(scope="module")
def quality():
    sys.path.insert(0, str(BENCHMARKS))  # quality.py imports machine.py from beside itself, as when run
    try:
        spec = importlib.util.spec_from_file_location("quality", BENCHMARKS / "quality.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _run(a_values, b_values):
    """A run's results: per-query metrics of sets A and B, their means as the set metric."""
    return {"results": {
        "A": {"P@1": statistics.fmean(a_values), "per_query": {f"q{i}": v for i, v in enumerate(a_values)}},
        "B": {"nDCG@10": statistics.fmean(b_values), "per_query": {f"q{i}": v for i, v in enumerate(b_values)}},
    }}


def _average(run):
    return (run["results"]["A"]["P@1"] + run["results"]["B"]["nDCG@10"]) / 2


def test_the_difference_of_losses_uses_only_the_seeds_both_losses_have(quality):
    # Standard has a lucky second seed that SamToNe has not run yet: it must not lower SamToNe's difference.
    standard_0 = _run([1, 0, 0, 1], [0.5, 0.25, 0.75])
    standard_1 = _run([1, 1, 1, 1], [1.0, 1.0, 1.0])
    samtone_0 = _run([1, 1, 0, 1], [0.5, 0.5, 0.75])
    store = {"sets": SETS, "ade|standard|0": standard_0, "ade|standard|1": standard_1, "ade|SamToNe|0": samtone_0}

    text = quality.report(store)

    line = next(line for line in text.splitlines() if line.startswith("- ade: SamToNe − standard"))
    expected = _average(samtone_0) - _average(standard_0)
    assert expected > 0
    assert f"= {expected:+.4f} on the average over seed 0 (one seed so far)" in line
    assert line.endswith(f"paired by seed: {expected:+.4f}") or f"paired by seed: {expected:+.4f};" in line


def test_with_several_common_seeds_the_difference_is_the_mean_paired_difference(quality):
    runs = {
        "ade|standard|0": _run([1, 0, 0, 1], [0.5, 0.25, 0.75]),
        "ade|standard|1": _run([1, 1, 0, 0], [0.25, 0.25, 0.75]),
        "ade|SamToNe|0": _run([1, 1, 0, 1], [0.5, 0.5, 0.75]),
        "ade|SamToNe|1": _run([1, 1, 0, 1], [0.25, 0.5, 0.75]),
        "ade|SamToNe|2": _run([0, 0, 0, 0], [0.0, 0.0, 0.0]),  # no standard seed 2: left out of the comparison
    }
    text = quality.report({"sets": SETS, **runs})

    line = next(line for line in text.splitlines() if line.startswith("- ade: SamToNe − standard"))
    paired = [_average(runs[f"ade|SamToNe|{s}"]) - _average(runs[f"ade|standard|{s}"]) for s in (0, 1)]
    spread = max(statistics.stdev([_average(runs[f"ade|{loss}|{s}"]) for s in (0, 1)])
                 for loss in ("standard", "SamToNe"))
    assert f"= {statistics.fmean(paired):+.4f} on the average over seeds 0, 1" in line
    assert f"(largest standard deviation {spread:.4f})" in line
    assert re.search(r"over queries p = [0-9.]+ on the average", line)


def test_the_grid_runs_ade_and_ade_spl_for_every_seed_before_sde(quality):
    order = quality.run_order([0, 1, 2], ["ade", "ade_spl", "sde"])

    assert order == [(0, "ade"), (0, "ade_spl"), (1, "ade"), (1, "ade_spl"), (2, "ade"), (2, "ade_spl"),
                     (0, "sde"), (1, "sde"), (2, "sde")]


def test_the_runs_table_lists_each_run_in_the_order_run_with_its_cpu_and_times(quality):
    avx2 = ["avx", "avx2", "f16c", "fma"]
    amx = avx2 + ["amx_bf16", "amx_int8", "avx512_bf16", "avx512f"]
    timing = {"eval_seconds": 700.4, "first_loss": 0.2861, "final_loss": 0.1209}
    store = {"sets": SETS,  # written sde first: the table keeps that order, not the keys' order
             "sde|standard|0": {**_run([1, 1], [0.5, 0.5]), **timing, "train_seconds": 2193.8, "cpu_flags": avx2},
             "ade|SamToNe|1": {**_run([1, 0], [0.5, 0.5]), **timing, "train_seconds": 1345.6, "cpu_flags": amx}}

    rows = [line for line in quality.report(store).splitlines() if re.match(r"\| \d+ \| ", line)]

    assert rows == ["| 1 | sde | standard | 0 | AVX2 | 2194 | 700 | 0.286 → 0.121 |",
                    "| 2 | ade | SamToNe | 1 | AVX-512 + AMX | 1346 | 700 | 0.286 → 0.121 |"]
    # A store without CPU flags (the 1-layer study) has no runs table.
    legacy = {"sets": SETS, "ade|standard|0": {**_run([1, 1], [0.5, 0.5]), "train_seconds": 1.0, "eval_seconds": 1.0}}
    assert "| run |" not in quality.report(legacy)


def test_the_results_file_holds_each_sets_query_ids_once_and_reads_back_as_written(quality, tmp_path):
    store = {"sets": SETS, "zero-shot": _run([0, 1, 0, 1], [0.5, 0.5, 0.5]),
             "ade|standard|0": _run([1, 0, 0, 1], [0.5, 0.25, 0.75]),
             "ade|SamToNe|0": _run([1, 1, 0, 1], [0.5, 0.5, 1])}
    path = tmp_path / "quality.json"

    quality.write_store(path, store)

    text = path.read_text()
    assert text.count('"q3"') == 1  # set A's ids, once for three runs
    assert '"per_query": [1, 1, 0, 1]' in text  # SamToNe's A values, in id order, on one line
    assert quality.read_store(path) == store
    assert quality.report(quality.read_store(path)) == quality.report(store)


def test_a_results_file_with_a_dict_per_query_as_earlier_versions_wrote_reads_the_same(quality, tmp_path):
    store = {"sets": SETS, "ade|standard|0": _run([1, 0, 0, 1], [0.5, 0.25, 0.75])}
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(store, indent=1))

    assert quality.read_store(path) == store


def test_a_run_that_scored_other_queries_is_refused_and_the_file_left_as_it_was(quality, tmp_path):
    path = tmp_path / "quality.json"
    quality.write_store(path, {"sets": SETS, "ade|standard|0": _run([1, 0, 0, 1], [0.5, 0.25, 0.75])})
    before = path.read_text()
    store = {"sets": SETS, "ade|standard|0": _run([1, 0, 0, 1], [0.5, 0.25, 0.75]),
             "ade|SamToNe|0": _run([1, 1, 0], [0.5, 0.5, 1])}

    with pytest.raises(ValueError, match=re.escape("run ade|SamToNe|0 scored other A queries")):
        quality.write_store(path, store)
    assert path.read_text() == before
