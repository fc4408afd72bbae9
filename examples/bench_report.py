"""The arithmetic and the tables of examples/benchmark.py: raw runs in, aggregates and markdown out.

Pure functions of the list of runs the benchmark recorded, in order: reference measurements
(`kind: reference`, both references at one R) and contender runs (`kind: contender`), each contender
run naming the R just before and just after it (`ref_before`, `ref_after`: indexes into the list).
"""

from __future__ import annotations

import statistics
from collections import Counter

from examples.bench_baselines import REFERENCES


def reference_around(runs: list[dict], run: dict) -> dict[str, float]:
    """{reference: mean samples/s of the R before and the R after this run} (the ones that succeeded)."""
    around: dict[str, float] = {}
    for name in REFERENCES:
        values = [runs[i]["results"][name]["samples_per_second"] for i in (run["ref_before"], run["ref_after"])
                  if i is not None and "samples_per_second" in runs[i]["results"].get(name, {})]
        if values:
            around[name] = sum(values) / len(values)
    return around


def with_ratios(runs: list[dict]) -> list[dict]:
    """The contender runs, each with its references around it, the gating one (the larger) and the ratios."""
    out = []
    for run in runs:
        if run["kind"] != "contender":
            continue
        run = dict(run)
        around = reference_around(runs, run)
        run["references"] = around
        if "samples_per_second" in run and around:
            gate = max(around, key=around.get)
            run["gated_by"] = gate
            run["ratio"] = run["samples_per_second"] / around[gate]
            run["ratios"] = {name: run["samples_per_second"] / value for name, value in around.items()}
        out.append(run)
    return out


def spread(values: list[float]) -> dict:
    """mean, min, max and (from 2 values on) the sample standard deviation."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else None}


def aggregate(runs: list[dict], contenders: list[str]) -> dict:
    """Per contender: samples/s and ratio (to the gating reference, and to each) over the repeats;
    per reference and cluster: samples/s over all its measurements."""
    rated = with_ratios(runs)
    result: dict = {"contenders": {}, "references": {}}
    for name in contenders:
        mine = [r for r in rated if r["name"] == name]
        ok = [r for r in mine if "samples_per_second" in r]
        gated = [r for r in ok if "ratio" in r]
        entry = {
            "cluster": mine[0]["cluster"] if mine else None,
            "runs": len(mine), "failed": [r["error"] for r in mine if "error" in r],
            "samples_per_second": spread([r["samples_per_second"] for r in ok]),
            "ratio": spread([r["ratio"] for r in gated]),
            "gated_by": dict(Counter(r["gated_by"] for r in gated)),
            "ratio_to": {ref: spread([r["ratios"][ref] for r in gated if ref in r["ratios"]]) for ref in REFERENCES},
        }
        for key in ("ms_compute_per_step", "ms_exchange_per_step", "cpu_ms_per_round", "cpu_sys_ms_per_round"):
            values = [r[key] for r in ok if key in r]
            entry[key] = statistics.fmean(values) if values else None
        # The ratio the run's CPU cost allows at best (its cores never idle), to the same reference.
        bounds = [r["ratio"] * r["cpu_bound_samples_per_second"] / r["samples_per_second"] for r in gated
                  if r.get("cpu_bound_samples_per_second") and r["samples_per_second"]]
        entry["cpu_bound_ratio"] = statistics.fmean(bounds) if bounds else None
        result["contenders"][name] = entry
    for run in runs:
        if run["kind"] != "reference":
            continue
        for ref, measured in run["results"].items():
            bucket = result["references"].setdefault(f"{ref}@{run['cluster']}", {"values": [], "failed": [], "cpu": []})
            if "samples_per_second" in measured:
                bucket["values"].append(measured["samples_per_second"])
                if "cpu_ms_per_round" in measured:
                    bucket["cpu"].append((measured["cpu_ms_per_round"], measured["cpu_sys_ms_per_round"]))
            else:
                bucket["failed"].append(measured["error"])
    for bucket in result["references"].values():
        bucket["samples_per_second"] = spread(bucket.pop("values"))
        # Its CPU per round: the floor a contender's exchange adds to (with no exchange at all).
        cpu = bucket.pop("cpu")
        bucket["cpu_ms_per_round"] = statistics.fmean(c for c, _ in cpu) if cpu else None
        bucket["cpu_sys_ms_per_round"] = statistics.fmean(k for _, k in cpu) if cpu else None
    return result


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _spread_text(s: dict, fmt: str) -> str:
    if not s.get("n"):
        return "-"
    text = f"{_num(s['min'], fmt)}–{_num(s['max'], fmt)}"
    return text + (f", sd {_num(s['stdev'], fmt)}" if s.get("stdev") is not None else "") + f" (n={s['n']})"


def _gate_text(gated_by: dict) -> str:
    if len(gated_by) == 1:
        return next(iter(gated_by))
    return "mixed: " + ", ".join(f"{name} {count}x" for name, count in sorted(gated_by.items()))


def _cpu_text(a: dict) -> str:
    if a.get("cpu_ms_per_round") is None:
        return "-"
    return f"{a['cpu_ms_per_round']:.1f} ({a['cpu_sys_ms_per_round']:.1f})"


CLUSTER_NOTE = {"one-node": "", "two-node": " [2-node cluster]"}


def table(aggregates: dict) -> str:
    lines = ["| contender | samples/s mean | spread | ratio mean (gating ref) | ratio spread | ms compute/step | ms exchange/step "
             "| CPU core-ms/round (kernel) | ratio at 100 % CPU |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for name, a in aggregates["contenders"].items():
        sps = a["samples_per_second"]
        failed = f" ({len(a['failed'])} of {a['runs']} failed)" if a["failed"] else ""
        if not sps.get("n"):
            lines.append(f"| {name}{failed} | failed | - | - | - | - | - | - | - |")
            continue
        ratio = a["ratio"]
        ratio_text = f"{ratio['mean']:.2f} ({_gate_text(a['gated_by'])})" if ratio.get("n") else "-"
        lines.append(f"| {name}{CLUSTER_NOTE.get(a['cluster'], '')}{failed} | {sps['mean']:,.0f} | {_spread_text(sps, ',.0f')} "
                     f"| {ratio_text} | {_spread_text(ratio, '.2f')} | {_num(a['ms_compute_per_step'], '.1f')} "
                     f"| {_num(a['ms_exchange_per_step'], '.1f')} | {_cpu_text(a)} | {_num(a['cpu_bound_ratio'], '.2f')} |")
    for key, r in aggregates["references"].items():
        ref, cluster = key.split("@")
        sps = r["samples_per_second"]
        failed = f" ({len(r['failed'])} failed)" if r["failed"] else ""
        mean = f"{sps['mean']:,.0f}" if sps.get("n") else "failed"
        lines.append(f"| reference: {ref}{CLUSTER_NOTE.get(cluster, '')}{failed} | {mean} | {_spread_text(sps, ',.0f')} "
                     f"| - | - | - | - | {_cpu_text(r)} | - |")
    return "\n".join(lines)


def ratio_table(aggregates: dict) -> str:
    """Each contender's ratio to both references (the main table shows the gating one)."""
    lines = ["| contender | " + " | ".join(f"ratio to {ref}: mean (min–max)" for ref in REFERENCES) + " |",
             "|---|" + "---|" * len(REFERENCES)]
    for name, a in aggregates["contenders"].items():
        cells = []
        for ref in REFERENCES:
            s = a["ratio_to"][ref]
            cells.append(f"{s['mean']:.2f} ({s['min']:.2f}–{s['max']:.2f})" if s.get("n") else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versus_table(aggregates: dict, rival: str) -> str:
    """Each contender of `rival`'s cluster against it: the ratio of their mean ratios (how many times
    faster, drift taken out by the references) and `rival`'s CPU a round over the contender's (how many
    times the CPU it needs for the same samples). "" when `rival` has no successful run."""
    theirs = aggregates["contenders"].get(rival)
    if not theirs or not theirs["ratio"].get("n"):
        return ""
    lines = [f"| contender | ratio over {rival}'s | {rival}'s CPU a round over the contender's |", "|---|---:|---:|"]
    for name, a in aggregates["contenders"].items():
        if name == rival or a["cluster"] != theirs["cluster"] or not a["ratio"].get("n"):
            continue
        cpu = (theirs["cpu_ms_per_round"] / a["cpu_ms_per_round"]
               if theirs.get("cpu_ms_per_round") and a.get("cpu_ms_per_round") else None)
        lines.append(f"| {name} | {a['ratio']['mean'] / theirs['ratio']['mean']:.2f}x | "
                     f"{'-' if cpu is None else f'{cpu:.2f}x'} |")
    return "\n".join(lines) if len(lines) > 2 else ""
