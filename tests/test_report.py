"""Pareto fronts, hypervolumes, and reports of partial runs and runs with failed trials."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from morf_search.models.arch import Arch
from morf_search.report.report import write_report
from morf_search.rundir import RunDir
from morf_search.search.pareto import hypervolume_2d, hypervolume_curve, pareto_front
from morf_search.search.trials import TrialLog, make_row

ARCHS = ["k3-static", "k5-static", "k3.5-soft", "k3.5-hard"]


def frame(rows):
    return pd.DataFrame([{"arch": a, "accuracy": acc, "latency_ms": lat, "params": p, "flops": 1, "status": s}
                         for a, acc, lat, p, s in rows])


def test_front_respects_constraints_and_status():
    trials = frame([("a", 70, 1.0, 5, "ok"), ("b", 80, 2.0, 5, "ok"), ("c", 75, 3.0, 5, "ok"),
                    ("d", 90, 4.0, 50, "ok"), ("e", 99, 0.5, 5, "error"), ("f", 95, 0.5, 5, "infeasible")])
    assert list(pareto_front(trials, ["accuracy", "latency_ms"])["arch"]) == ["a", "b", "d"]
    assert list(pareto_front(trials, ["accuracy", "latency_ms"], {"params": 10})["arch"]) == ["a", "b"]
    assert list(pareto_front(trials, ["accuracy", "params"])["arch"]) == ["b", "d"]


def test_hypervolume_of_a_staircase():
    front = frame([("a", 70, 1.0, 1, "ok"), ("b", 80, 2.0, 1, "ok")])
    # reference (accuracy 60, latency 4): a covers 3 x 10, b adds 2 x 10 above a
    assert hypervolume_2d(front, ("accuracy", "latency_ms"), (60, 4)) == pytest.approx(30 + 20)
    assert hypervolume_2d(front, ("accuracy", "latency_ms"), (75, 1.5)) == pytest.approx(0.0)
    curve = hypervolume_curve(frame([("a", 70, 1.0, 1, "ok"), ("x", 60, 3.0, 1, "ok"), ("b", 80, 2.0, 1, "ok")]),
                              ("accuracy", "latency_ms"), (60, 4))
    assert curve == pytest.approx([30, 30, 50])


def make_run(tmp_path, name, statuses):
    run = RunDir.create(tmp_path / "runs" / name, "space: {kernels: [3, 5], max_experts: 2}\n", seed=0,
                        command="test")
    log = TrialLog(run.trials_csv)
    rng = np.random.default_rng(len(name))
    for i, status in enumerate(statuses):
        arch = Arch.parse("_".join(rng.choice(ARCHS, 4)))
        metrics = {} if status == "error" else {"accuracy": float(rng.uniform(40, 90)),
                                                 "latency_ms": float(rng.uniform(1, 5)), "params": 1000, "flops": 9}
        log.append(make_row(f"t{i}", arch, metrics, status, "boom: bad kernel" if status == "error" else "", 1.0,
                            "ray"))
    return run


def test_report_of_a_partial_run_with_failed_trials(tmp_path):
    run = make_run(tmp_path, "partial", ["ok"] * 12 + ["error", "infeasible"])
    report = write_report(run).read_text()
    for stem in ("accuracy_latency", "search_progress"):
        assert (run.plots / f"{stem}.png").stat().st_size > 10_000 and (run.plots / f"{stem}.svg").is_file()
    assert "14 trials: 12 ok, 1 error, 1 infeasible" in report
    assert "boom: bad kernel" in report and "### Pareto front" in report
    assert re.search(r"\| supernet +\| not started", report) and "## Finalists" in report and "_none yet_" in report
    assert "![Accuracy against latency](plots/accuracy_latency.png)" in report


def test_report_of_a_run_without_trials(tmp_path):
    run = make_run(tmp_path, "empty", [])
    assert "_no trials yet_" in write_report(run).read_text()


def test_compare_runs_overlays_fronts_with_hypervolumes(tmp_path):
    first, second = make_run(tmp_path, "ray-run", ["ok"] * 10), make_run(tmp_path, "nni-run", ["ok"] * 8)
    script = Path(__file__).parents[1] / "analysis" / "compare_runs.py"
    result = subprocess.run([sys.executable, str(script), str(first.path), str(second.path), "--out",
                             str(tmp_path / "compare")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ray-run" in result.stdout and "nni-run" in result.stdout and "hypervolume" in result.stdout
    assert (tmp_path / "compare" / "fronts.png").stat().st_size > 10_000
