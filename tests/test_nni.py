"""The NNI engine: `morf-search run --engine nni` end to end, resume after kill -9, strategies, errors."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from test_data import write_cifar10
from test_run import _wait_for_rows, morf, space_file

from morf_search.core.errors import UserError
from morf_search.models.arch import Arch
from morf_search.rundir import RunDir
from morf_search.search.engines import get_engine
from morf_search.search.runner import TrialResult
from morf_search.search.trials import TrialLog, make_row
from morf_search.space.search_space import SearchSpace

nni_engine = get_engine("nni")

FOUR_STAGES = [{"kernels": [3, 5, 7]}, {"kernels": [3, 5]}, {"kernels": [3]}, {"kernels": [3]}]  # 12 x 5 = 60 archs
# Timing each candidate beats warming up the whole latency table for a few trials; no finalists to fine-tune.
QUICK = {"latency": {"mode": "measure", "rounds": 3}, "finalists": {"top_k": 0}}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "cifar"
    write_cifar10(root, per_batch=16, test=32)
    return root


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home directory of its own for the runs, to see whether NNI writes to ~/nni-experiments."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


def check_run_directory(run: Path, home: Path, num_trials: int, phases=("supernet", "search", "pareto")):
    trials = pd.read_csv(run / "trials.csv", keep_default_na=False)
    assert len(trials) == num_trials and trials["trial_id"].is_unique, trials
    assert trials["arch"].is_unique, "NNI's strategies never propose an arch twice"
    assert (trials["engine"] == "nni").all()
    assert list(trials.columns) == list(make_row("t", Arch.parse(trials["arch"][0]), {}).keys()), "same schema as Ray"
    assert set(trials["status"]) <= {"ok", "infeasible"}
    assert (trials["latency_ms"] > 0).all() and (trials["params"] > 0).all() and (trials["flops"] > 0).all()
    pareto = pd.read_csv(run / "pareto.csv")
    assert 1 <= len(pareto) <= num_trials and set(pareto["arch"]) <= set(trials["arch"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert {p: manifest["phases"][p]["status"] for p in phases} == dict.fromkeys(phases, "done")
    assert (run / "engine" / "nni" / "search" / "log" / "experiment.log").is_file(), "NNI's experiment lives in the run"
    assert (run / "engine" / "nni" / "search" / "checkpoint" / "config.json").is_file()
    assert not (home / "nni-experiments").exists(), "NNI wrote to ~/nni-experiments"
    return trials


def test_engine_nni_on_the_command_line_runs_a_random_search(tmp_path, cifar, home):
    path = space_file(tmp_path, cifar, search={"num_trials": 6}, **QUICK)  # an nsga2 (Ray) space
    result = morf("run", str(path), "--name", "demo", "--engine", "nni", cwd=tmp_path)
    assert "nni/random" in result.stderr and "Traceback" not in result.stderr
    assert not re.search(r"^\[\d{4}-\d\d-\d\d ", result.stdout, re.M), "NNI's own log lines stay off the console"
    assert "not a nn.Module" not in result.stderr, "NNI's import warnings about torch classes stay quiet"
    check_run_directory(tmp_path / "runs" / "demo", home, 6)


def test_kill_9_then_resume_continues_an_evolution_search(tmp_path, cifar, home):
    path = space_file(tmp_path, cifar, search={"engine": "nni", "algorithm": "evolution", "num_trials": 10}, **QUICK)
    env = {**os.environ, "MORF_SEARCH_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "morf_search", "run", str(path), "--name", "killed"],
                               cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = tmp_path / "runs" / "killed"
    _wait_for_rows(run / "trials.csv", 3, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = pd.read_csv(run / "trials.csv", keep_default_na=False)
    assert 3 <= len(before) < 10

    result = morf("run", str(path), "--name", "killed", "--resume", cwd=tmp_path)
    assert f"replaying its {len(before)} recorded trials" in result.stderr
    after = check_run_directory(run, home, 10)
    pd.testing.assert_frame_equal(after.set_index("trial_id").loc[before["trial_id"]].reset_index(), before)


# -- the engine in-process, with a fake TrialRunner (no data, no training) ---------------------------------------

class FakeRunner:
    """Scores an arch by its kernel sizes and counts evaluations; the n-th call raises if n is in ``fail``
    and violates a constraint if n is in ``infeasible``."""

    def __init__(self, fail=(), infeasible=(), evaluation="oneshot"):
        self.standalone_epochs = 2 if evaluation == "standalone" else None
        self.evaluated, self.fail, self.infeasible = [], set(fail), set(infeasible)

    def evaluate(self, arch, report=None):
        self.evaluated.append(str(arch))
        if len(self.evaluated) in self.fail:
            raise RuntimeError("this arch cannot be evaluated")
        spans = sum(e.span for stage in arch.stages for e in stage.experts)
        metrics = {"accuracy": 50.0 + spans / 7, "latency_ms": spans / 3, "params": 10, "flops": 20}
        if len(self.evaluated) in self.infeasible:
            return TrialResult({**metrics, "accuracy": 0.0}, "infeasible", "latency_ms 9 > 1")
        return TrialResult(metrics, epochs=self.standalone_epochs)


def make_run(tmp_path, name, algorithm, stages=FOUR_STAGES):
    space_text = yaml.safe_dump({"space": {"stages": stages}, "search": {"engine": "nni", "algorithm": algorithm}})
    run = RunDir.create(tmp_path / "runs" / name, space_text, 0, "test")
    return run, SearchSpace(run.load_space())


def search(run, space, num_trials, seed=0, resume=False, runner=None):
    runner = runner or FakeRunner()
    context = SimpleNamespace(run=run, space=space, runner=runner)
    outcome = nni_engine.search(context, num_trials, seed, resume)
    assert outcome.recorded == len(TrialLog(run.trials_csv)) and outcome.wanted == num_trials
    return TrialLog(run.trials_csv).frame(), runner


def test_the_space_is_one_categorical_per_stage_over_the_stage_strings(tmp_path):
    _, space = make_run(tmp_path, "space", "random")
    model_space = nni_engine.StageChoices([[str(spec) for spec in choices] for choices in space.stages])
    mutables = model_space.simplify()
    assert list(mutables) == ["stage0", "stage1", "stage2", "stage3"]
    assert mutables["stage1"].values == ["k3-static", "k5-static", "k3.5-static", "k3.5-soft", "k3.5-hard"]
    assert model_space.freeze({"stage0": "k3.7-soft", "stage1": "k5-static", "stage2": "k3-static",
                               "stage3": "k3-static"}).choices == ["k3.7-soft", "k5-static", "k3-static", "k3-static"]


def test_grid_enumerates_every_arch_of_a_small_space_once(tmp_path, monkeypatch):
    run, space = make_run(tmp_path, "grid", "grid", stages=[{"kernels": [3, 5]}, {"kernels": [3, 5]}, *FOUR_STAGES[2:]])
    rows, _ = search(run, space, len(space))
    assert len(space) == 25 and sorted(rows["arch"]) == sorted(str(arch) for arch in space)


def test_the_same_seed_proposes_the_same_archs(tmp_path, monkeypatch):
    sequences = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run, space = make_run(tmp_path, name, "random")
        sequences.append(list(search(run, space, 8, seed=seed)[0]["arch"]))
    assert sequences[0] == sequences[1] and sequences[0] != sequences[2]
    assert len(set(sequences[0])) == 8


def test_a_trial_that_raises_is_an_error_row_and_the_search_goes_on(tmp_path, monkeypatch):
    run, space = make_run(tmp_path, "errors", "evolution")
    rows, runner = search(run, space, 6, runner=FakeRunner(fail={2}))
    assert len(rows) == 6 and len(runner.evaluated) == 6
    failed = rows.set_index("trial_id").loc["nni_00001"]
    assert failed["status"] == "error" and failed["message"] == "RuntimeError: this arch cannot be evaluated"
    assert failed["arch"] == runner.evaluated[1] and pd.isna(failed["accuracy"])
    assert (rows.drop(index=1)["status"] == "ok").all()


def test_nni_optimizes_accuracy_with_infeasible_archs_at_zero(tmp_path, monkeypatch):
    reported = []
    monkeypatch.setattr(nni_engine.nni, "report_final_result", reported.append)
    run, space = make_run(tmp_path, "metric", "random")
    rows, _ = search(run, space, 5, runner=FakeRunner(fail={2}, infeasible={4}))
    assert list(rows["status"]) == ["ok", "error", "ok", "infeasible", "ok"]
    assert reported == list(rows["accuracy"].drop(index=1)) and reported[2] == 0.0, "an error reports no metric"
    assert rows["latency_ms"].drop(index=1).gt(0).all(), "every objective is recorded, infeasible or not"


def test_standalone_trials_train_from_scratch_for_every_epoch(tmp_path, monkeypatch):
    run, space = make_run(tmp_path, "standalone", "random")
    rows, runner = search(run, space, 3, runner=FakeRunner(evaluation="standalone"))
    assert len(runner.evaluated) == 3 and list(rows["epochs"]) == [2, 2, 2]


def test_more_trials_than_archs_is_refused(tmp_path, monkeypatch):
    run, space = make_run(tmp_path, "small", "random", stages=[{"kernels": [3]}])  # one entry for all stages
    with pytest.raises(UserError, match="more than the 1 architectures"):
        search(run, space, 2)


def test_a_strategy_that_runs_out_of_new_archs_says_so(tmp_path, monkeypatch):
    def impatient_random(*args):
        strategy = nni_engine.strategies.Random(seed=0)
        strategy._retry_helper.retries = 1  # gives up at its first duplicate sample
        return strategy

    monkeypatch.setattr(nni_engine, "_strategy", impatient_random)
    run, space = make_run(tmp_path, "exhausted", "random", stages=[{"kernels": [3, 5]}, *[{"kernels": [3]}] * 3])
    with pytest.raises(UserError, match=r"random strategy proposed only \d distinct architectures for 5 trials"):
        search(run, space, 5)
    assert 1 <= len(TrialLog(run.trials_csv)) < 5


@pytest.mark.parametrize("algorithm, num_trials", [("random", 10), ("evolution", 40), ("tpe", 4)])
def test_resume_replays_recorded_trials_and_evaluates_only_the_rest(tmp_path, monkeypatch, algorithm, num_trials):
    """Evolution with 40 trials holds tournaments of 2, so its proposals depend on the replayed accuracies."""
    run, space = make_run(tmp_path, "whole", algorithm)
    whole, _ = search(run, space, num_trials)

    run, space = make_run(tmp_path, "killed", algorithm)
    kept = num_trials // 2
    whole.head(kept).to_csv(run.trials_csv, index=False)  # what a kill left behind
    before = TrialLog(run.trials_csv).frame()
    resumed, runner = search(run, space, num_trials, resume=True)

    assert len(runner.evaluated) == num_trials - kept, "a recorded trial was evaluated again"
    assert list(resumed["trial_id"]) == list(whole["trial_id"]) and list(resumed["arch"]) == list(whole["arch"])
    pd.testing.assert_frame_equal(resumed.head(kept), before)
