"""examples/benchmark.py's arithmetic (examples/bench_report.py): each contender run against the
references measured just before and just after it, gated on the larger one."""

import pytest

from examples.bench_report import aggregate, ratio_table, table, versus_table, with_ratios


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


def test_the_cpu_bound_is_the_rate_the_runs_cpu_cost_allows_over_the_same_reference():
    """examples/benchmark.py's cpu_bound: a round of one step per worker costs each worker's CPU per step
    plus each server's per update times its updates per round; at 100 % of the cores that is the best rate."""
    import os

    from examples.benchmark import cpu_bound

    summary = {"batch_size": 256,
               "per_worker": [{"steps": 100, "cpu_ms_per_step": 16.0, "cpu_sys_ms_per_step": 2.0}] * 2,
               "per_server": [{"version": 100, "cpu_ms_per_update": 8.0, "cpu_sys_ms_per_update": 5.0}]}
    sync = cpu_bound(summary)  # one update per round of 2 steps
    assert sync["cpu_ms_per_round"] == pytest.approx(40.0) and sync["cpu_sys_ms_per_round"] == pytest.approx(9.0)
    assert sync["cpu_bound_samples_per_second"] == pytest.approx(os.cpu_count() * 1000 / 40.0 * 512)
    asynchronous = cpu_bound({**summary, "per_server": [{**summary["per_server"][0], "version": 200}]})
    assert asynchronous["cpu_ms_per_round"] == pytest.approx(48.0)  # an update per step: two per round
    bounded = dict(RUNS[1], cpu_ms_per_round=40.0, cpu_sys_ms_per_round=9.0, cpu_bound_samples_per_second=10_000)
    agg = aggregate([RUNS[0], bounded, RUNS[2]], ["sync"])
    assert agg["contenders"]["sync"]["cpu_bound_ratio"] == pytest.approx(10_000 / 9_200)
    assert "| 40.0 (9.0) | 1.09 |" in table(agg)


def test_the_references_cpu_per_round_is_their_mean_over_every_r():
    """The references' CPU a round (one step of each ceiling actor, one global step of the single
    process): the floor with no exchange, printed beside the contenders' in the same column."""
    def measured(ceiling_cpu):
        r = ref(10_000, 9_000)
        r["results"]["ceiling"].update(cpu_ms_per_round=ceiling_cpu, cpu_sys_ms_per_round=1.0)
        return r

    agg = aggregate([measured(30.0), RUNS[1], measured(34.0)], ["sync"])
    ceiling = agg["references"]["ceiling@one-node"]
    assert ceiling["cpu_ms_per_round"] == pytest.approx(32.0) and ceiling["cpu_sys_ms_per_round"] == pytest.approx(1.0)
    assert agg["references"]["single-process@one-node"]["cpu_ms_per_round"] is None  # not measured: "-"
    text = table(agg)
    assert "| reference: ceiling | 10,000 |" in text and "| 32.0 (1.0) | - |" in text
    assert [line for line in text.splitlines() if "reference: single-process" in line][0].endswith("| - | - |")


def test_versus_tf_ps_is_the_ratio_of_the_mean_ratios_and_of_the_cpu_per_round():
    """The issue's "sync >= 1.6x tf-ps" read off one run: each contender of the rival's cluster against
    it, faster by its ratio over the rival's, cheaper by the rival's CPU a round over its own."""
    sync = dict(RUNS[1], cpu_ms_per_round=70.0, cpu_sys_ms_per_round=7.0)
    tf_ps = dict(RUNS[3], name="tf-ps", samples_per_second=5_400, cpu_ms_per_round=105.0, cpu_sys_ms_per_round=25.0)
    agg = aggregate([RUNS[0], sync, RUNS[2], tf_ps, RUNS[4]], ["sync", "tf-ps"])
    text = versus_table(agg, "tf-ps")
    speed = (8_000 / 9_200) / (5_400 / 9_000)  # each against the larger reference around it
    assert f"| sync | {speed:.2f}x | 1.50x |" in text and "| tf-ps |" not in text
    assert versus_table(agg, "tf-ps-2nodes") == ""  # not in this run
    other_cluster = dict(sync, cluster="two-node")
    assert versus_table(aggregate([RUNS[0], other_cluster, RUNS[2], tf_ps, RUNS[4]], ["sync", "tf-ps"]), "tf-ps") == ""
