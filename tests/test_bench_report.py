"""examples/benchmark.py's arithmetic (examples/bench_report.py): each contender run against the
references measured just before and just after it, gated on the larger one."""

import pytest

from examples.bench_report import aggregate, ratio_table, table, with_ratios


def ref(ceiling, single):
    return {"kind": "reference", "cluster": "one-node",
            "results": {"ceiling": {"samples_per_second": ceiling}, "single-process": {"samples_per_second": single}}}


def run(name, sps, before, after):
    return {"kind": "contender", "name": name, "cluster": "one-node", "samples_per_second": sps,
            "ref_before": before, "ref_after": after, "ms_compute_per_step": 40.0, "ms_exchange_per_step": 5.0}


# R, C1, R, C2, R: the machine slows down between the first and the last R.
RUNS = [ref(10_000, 9_000), run("sync", 8_000, 0, 2), ref(8_000, 9_400), run("async", 8_500, 2, 4), ref(6_000, 8_600)]


def test_each_run_is_gated_on_the_larger_reference_around_it():
    sync, asynchronous = with_ratios(RUNS)
    assert sync["references"] == {"ceiling": 9_000, "single-process": 9_200}
    assert sync["gated_by"] == "single-process" and sync["ratio"] == pytest.approx(8_000 / 9_200)
    assert asynchronous["references"] == {"ceiling": 7_000, "single-process": 9_000}
    assert asynchronous["ratio"] == pytest.approx(8_500 / 9_000)
    assert asynchronous["ratios"]["ceiling"] == pytest.approx(8_500 / 7_000)


def test_aggregates_over_repeats_and_failed_runs_are_counted_not_averaged():
    runs = RUNS + [run("sync", 9_000, 4, 6), ref(9_000, 9_000),
                   {"kind": "contender", "name": "async", "cluster": "one-node", "error": "TrainingError: boom",
                    "ref_before": 6, "ref_after": 8}, ref(9_000, 9_000)]
    agg = aggregate(runs, ["sync", "async"])
    sync = agg["contenders"]["sync"]
    assert sync["samples_per_second"]["n"] == 2 and sync["samples_per_second"]["mean"] == 8_500
    assert sync["ratio"]["mean"] == pytest.approx((8_000 / 9_200 + 9_000 / 8_800) / 2)
    assert agg["contenders"]["async"]["failed"] == ["TrainingError: boom"]
    assert agg["references"]["ceiling@one-node"]["samples_per_second"]["n"] == 5
    text = table(agg)
    assert "| sync | 8,500 |" in text and "(1 of 2 failed)" in text and "reference: single-process" in text
    # to the ceiling (8000/9000 + 9000/7500) / 2, to the single process (8000/9200 + 9000/8800) / 2
    assert "| sync | 1.04 (0.89–1.20) | 0.95 (0.87–1.02) |" in ratio_table(agg)


def test_a_malformed_link_is_refused_before_anything_runs():
    """`benchmark.py --link` with no delay (or a unit tc does not know) says what it expects, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "benchmark.py"
    done = subprocess.run([sys.executable, str(script), "--link", "10gbps", "--only", "raytf-sync-2nodes"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--link '10gbps': expected RATE,DELAY such as 10gbit,0.1ms" in done.stderr
