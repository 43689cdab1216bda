"""Overlay the accuracy-latency Pareto fronts of several runs, with their hypervolumes.

E.g. Ray Tune against NNI, or one-shot against standalone evaluation, on the same space:

    python analysis/compare_runs.py runs/quickstart runs/quickstart-nni [--out runs/compare]

All hypervolumes use one reference point (accuracy 0 %, 1.1 x the slowest latency over all
runs), so they are comparable; each run's front respects its own constraints.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from morf_search.report.plots import plot_fronts, plot_search_progress
from morf_search.report.report import OBJECTIVES_2D, hypervolume_reference
from morf_search.rundir import RunDir
from morf_search.search.pareto import hypervolume_2d, hypervolume_curve, pareto_front
from morf_search.search.trials import TrialLog


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    args = parser.parse_args()
    runs = [RunDir.open(path) for path in args.runs]
    frames = {str(run.path): TrialLog(run.trials_csv).frame() for run in runs}
    reference = hypervolume_reference(list(frames.values()))
    fronts, curves, rows = {}, {}, []
    for run in runs:
        config = run.load_space()
        frame = frames[str(run.path)]
        front = pareto_front(frame, OBJECTIVES_2D, config.search.constraints)
        volume = hypervolume_2d(front, OBJECTIVES_2D, reference)
        label = f"{run.path.name} ({config.search.engine}/{config.search.algorithm}, HV {volume:.4g})"
        fronts[label] = front
        curves[label] = hypervolume_curve(frame, OBJECTIVES_2D, reference, config.search.constraints)
        rows.append({"run": run.path.name, "engine": config.search.engine, "algorithm": config.search.algorithm,
                     "evaluation": config.search.evaluation, "trials": len(frame), "front": len(front),
                     "hypervolume": volume, "best_accuracy": front["accuracy"].max() if len(front) else None,
                     "fastest_ms": front["latency_ms"].min() if len(front) else None})
    title = f"Pareto fronts; hypervolume reference: accuracy {reference[0]:g} %, latency {reference[1]:.4g} ms"
    plot_fronts(fronts, title, args.out / "fronts")
    plot_search_progress(curves, reference, "Search progress", args.out / "search_progress")
    table = pd.DataFrame(rows)
    (args.out / "compare.md").write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n")
    print(table.to_markdown(index=False, floatfmt=".4g"))
    print(f"wrote {args.out}/fronts.png, search_progress.png, compare.md")


if __name__ == "__main__":
    main()
