"""Pareto fronts, hypervolumes, and reports of partial runs and runs with failed trials."""
import html
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

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
                                                 "latency_ms": float(rng.uniform(1, 5)),
                                                 "params": int(rng.integers(1000, 9000)), "flops": 9}
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
    assert re.search(r"\| supernet +\| not started +\| +\|", report) and "## Finalists" in report
    assert "_none yet_" in report and "nan" not in report
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


def add_finalists(run, trials: pd.DataFrame):
    """Two finalists of ``trials`` (one with a deploy latency spread, one without) and a baseline of two seeds."""
    picked = trials.nlargest(2, "accuracy")
    finalists = pd.DataFrame({
        "arch": picked["arch"].values, "accuracy_oneshot": picked["accuracy"].values,
        "accuracy_finetuned": picked["accuracy"].values + 1, "accuracy_finetuned_std": [0.5, 0.2],
        "train_latency_ms": picked["latency_ms"].values * 1.3, "latency_ms": picked["latency_ms"].values,
        "latency_p10_ms": [picked["latency_ms"].iloc[0] - 0.1, np.nan],
        "latency_p90_ms": [picked["latency_ms"].iloc[0] + 0.4, np.nan],
        "params": picked["params"].values, "flops": 9, "verified": True, "plain_timm": False,
        "export": [f"exports/{a}" for a in picked["arch"]], "baseline_arch": "k3-static_k3-static_k3-static_k3-static"})
    finalists.to_csv(run.finalists_csv, index=False)
    pd.DataFrame([{"trial_id": f"baseline-seed{seed}", "arch": "k3-static_k3-static_k3-static_k3-static",
                   "role": "single receptive field nearest in latency", "trained": "fine-tuned", "seed": seed,
                   "accuracy": 70.0 + seed, "latency_ms": 2.0, "params": 1234, "flops": 9, "status": "ok",
                   "engine": "baseline"} for seed in (0, 1)]).to_csv(run.references_csv, index=False)
    return finalists


def test_interactive_front_is_a_self_contained_page_linked_from_the_report(tmp_path):
    run = make_run(tmp_path, "interactive", ["ok"] * 20)
    trials = TrialLog(run.trials_csv).frame()
    add_finalists(run, trials)
    report = write_report(run).read_text()
    page = (run.plots / "accuracy_latency.html").read_text()
    assert "[Interactive version](plots/accuracy_latency.html)" in report
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert not re.search(r"<script|<link|<iframe|@import|url\((?!#)", page, re.IGNORECASE), "nothing to load"
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page, re.IGNORECASE), "no network at view time"
    tips = re.findall(r"<title>(.*?)</title>", page.split("<svg", 1)[1], re.DOTALL)
    front = pareto_front(trials, ["accuracy", "latency_ms"])
    assert len(front) >= 2
    table = page.split("<h2>Pareto front</h2>")[1]
    for _, row in front.iterrows():
        tip = next(t for t in tips if t.startswith(row["arch"] + "\nPareto front"))
        assert f"accuracy {row['accuracy']:.2f} %" in tip and f"latency {row['latency_ms']:.3f} ms" in tip
        assert f"params {row['params']:,}" in tip
        cells = re.search(rf"<td>{re.escape(row['arch'])}</td>(.*?)</tr>", table, re.DOTALL).group(1)
        assert re.findall(r"<td>(.*?)</td>", cells)[:3] == [f"{row['accuracy']:.4g}", f"{row['latency_ms']:.4g}",
                                                            str(row["params"])]
    assert sum(t.split("\n")[1] == "trial" for t in tips) == len(trials), "every trial has its hover text"
    assert any("finalist: fine-tuned, deployed" in t and "p90" in t for t in tips)
    assert any(t.startswith("k3-static_k3-static_k3-static_k3-static\nbaseline") and "params 1,234" in t
               for t in tips)
    svg = ElementTree.parse(run.plots / "accuracy_latency.svg").getroot()  # still well-formed
    titles = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert titles == [html.unescape(t) for t in tips], "the SVG next to the PNG has the same hover texts"


def test_latency_bars_and_their_caption(tmp_path):
    run = make_run(tmp_path, "bars", ["ok"] * 12)
    finalists = add_finalists(run, TrialLog(run.trials_csv).frame())
    report = write_report(run).read_text()
    caption = report.split("![Accuracy against latency](plots/accuracy_latency.png)")[1].split("## ")[0]
    assert "p10 to p90" in caption and "drawn without a latency bar" in caption
    assert f"No recorded latency spread, so no bar, for finalist `{finalists['arch'].iloc[1]}`" in caption
    assert finalists["arch"].iloc[0] not in caption


def test_the_phase_table_names_the_report_being_written(tmp_path):
    run = make_run(tmp_path, "writing", ["ok"] * 5)
    run.set_phase("search", "done", seconds=12.25)
    run.set_phase("report", "running")
    report = write_report(run).read_text()
    assert re.search(r"\| search +\| done +\| +12\.2 \|", report)
    assert re.search(r"\| report +\| this report +\| +\|", report) and "nan" not in report
