"""What a search's bookkeeping costs per trial at 1,000 and 10,000 trials.

Builds a run directory of synthetic trials (the quickstart space, archs drawn from it, rows in
trials.csv's own schema by ``make_row``), and times, per trial: appending its row to
trials.csv, reading the table back, the Pareto front, the hypervolume curve, and the whole
``morf-search report`` (plots and report.md):

    python analysis/bench_bookkeeping.py [--trials 1000 10000] [--out DIR]

Bookkeeping is constant per trial when these per-trial figures stay flat as the run grows.
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import pandas as pd

from morf_search.report.report import OBJECTIVES_2D, hypervolume_reference, write_report
from morf_search.rundir import RunDir
from morf_search.search.pareto import hypervolume_curve, pareto_front
from morf_search.search.trials import TrialLog, make_row
from morf_search.space.schema import load_space
from morf_search.space.search_space import SearchSpace

SPACE = Path(__file__).parents[1] / "search_spaces" / "quickstart.yaml"


def synthetic_rows(space: SearchSpace, count: int, seed: int = 0):
    """Rows as a search writes them: latency grows with kernel size, accuracy with latency, plus noise."""
    rng = random.Random(seed)
    for i in range(count):
        arch = space.sample(rng)
        size = sum(max(expert.span for expert in stage.experts) for stage in arch.stages)
        latency = 0.1 * size + rng.uniform(0.0, 0.5)
        status = rng.choices(["ok", "infeasible", "error"], [0.9, 0.07, 0.03])[0]
        metrics = {"accuracy": 60 + 6 * latency + rng.gauss(0, 3), "latency_ms": latency, "params": 1e5 * size,
                   "flops": 1e7 * size} if status == "ok" else {"latency_ms": latency} if status == "infeasible" else {}
        routing = {"routing_warning": "stage 1: soft weights stay near uniform"} if rng.random() < 0.3 else None
        yield make_row(f"trial_{i:05d}", arch, metrics, status, "RuntimeError: synthetic" if status == "error" else "",
                       rng.uniform(0.5, 2.0), "ray", routing=routing)


def timed(work) -> float:
    """Wall seconds of ``work()``; ``timed.cpu`` keeps its CPU seconds (a shared machine inflates wall time)."""
    started, cpu = time.perf_counter(), time.process_time()
    work()
    timed.cpu = time.process_time() - cpu
    return time.perf_counter() - started


def bench(count: int, root: Path) -> dict:
    run = RunDir.create(root / f"synthetic-{count}", SPACE.read_text(), seed=0, command="bench_bookkeeping")
    config = run.load_space()
    rows = list(synthetic_rows(SearchSpace(load_space(run.space_file)), count))
    log = TrialLog(run.trials_csv)
    append = timed(lambda: [log.append(row) for row in rows])
    read = timed(log.frame)
    frame = log.frame()
    front = timed(lambda: pareto_front(frame, OBJECTIVES_2D, config.search.constraints))
    reference = hypervolume_reference([frame])
    curve = timed(lambda: hypervolume_curve(frame, OBJECTIVES_2D, reference, config.search.constraints))
    report = timed(lambda: write_report(run))
    report_cpu = timed.cpu
    per_trial = {"append": append, "read trials.csv": read, "front": front, "hypervolume curve": curve,
                 "whole report": report}
    return {"trials": count, **{f"{k} (us/trial)": 1e6 * v / count for k, v in per_trial.items()},
            "whole report (s)": report, "whole report (CPU s)": report_cpu,
            "front size": len(pareto_front(frame, OBJECTIVES_2D))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--out", type=Path, help="where the synthetic runs go (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        table = pd.DataFrame([bench(count, root) for count in args.trials])
    table["trials"] = table["trials"].map("{:,}".format)
    print(table.to_markdown(index=False, floatfmt=".3g"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (other work slows wall times)")


if __name__ == "__main__":
    main()
