"""`morf-search run` end to end with Ray Tune: run directory, resume after kill -9, errors, cluster."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_data import write_cifar10

from morf_search.core.ray_dirs import stop_leftover_ray

TRIALS = 6


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "cifar"
    write_cifar10(root, per_batch=16, test=32)
    return root


def space_file(tmp_path, cifar, **overrides):
    space = {
        "model": {"family": "convnext", "size": "cifar", "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]},
        "data": {"dataset": f"cifar10:{cifar}", "image_size": 16, "batch_size": 16},
        "space": {"stages": [{"kernels": [3, 5, 7]}, {"kernels": [3, 5]}, {"kernels": [3]}, {"kernels": [3]}]},
        "supernet": {"epochs": 1, "warmup_epochs": 0},
        "search": {"num_trials": TRIALS, "algorithm": "nsga2"},
        "latency": {"rounds": 3},
    }
    for section, values in overrides.items():
        space[section] = {**space.get(section, {}), **values}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def morf(*args, cwd, check=True, **kwargs):
    env = {**os.environ, "MORF_SEARCH_CACHE": str(Path(cwd) / "cache"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "morf_search", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_run_writes_a_complete_run_directory_that_pandas_and_ray_read(tmp_path, cifar):
    path = space_file(tmp_path, cifar)
    result = morf("run", str(path), "--name", "demo", cwd=tmp_path)
    assert "Traceback" not in result.stderr
    run = tmp_path / "runs" / "demo"
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == TRIALS and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"ok", "infeasible"}
    assert {"arch", "s0_experts", "s0_routing", "s0_top_k", "accuracy", "latency_ms", "params", "flops",
            "seconds"} <= set(trials.columns)
    assert trials["latency_ms"].gt(0).all() and trials["params"].gt(0).all()
    pareto = pd.read_csv(run / "pareto.csv")
    assert 1 <= len(pareto) <= TRIALS and set(pareto["arch"]) <= set(trials["arch"])

    manifest = json.loads((run / "manifest.json").read_text())
    assert {p: manifest["phases"][p]["status"] for p in ("supernet", "search", "pareto")} == dict.fromkeys(
        ("supernet", "search", "pareto"), "done")
    assert manifest["versions"]["torch"] == "2.14.1" and manifest["seed"] == 0
    assert set(manifest["files"]) >= {"supernet.safetensors", "trials.csv", "pareto.csv"}
    assert yaml.safe_load((run / "space.yaml").read_text())["search"]["num_trials"] == TRIALS
    assert (run / "engine" / "ray-tmp").exists(), "Ray's temp dir belongs inside the run"

    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(run / "engine" / "search"))
    assert len(analysis.trials) == TRIALS

    again = morf("run", str(path), "--name", "demo", cwd=tmp_path, check=False)
    assert again.returncode == 2 and "exists; pass --resume" in again.stderr
    resumed = morf("run", str(path), "--name", "demo", "--resume", cwd=tmp_path)
    assert "done earlier, skipped" in resumed.stderr
    assert len(pd.read_csv(run / "trials.csv")) == TRIALS


def _wait_for_rows(csv, count, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if csv.exists() and len(pd.read_csv(csv)) >= count:
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.2)
    raise AssertionError(f"no {count} rows in {csv} within {timeout}s")


# A kill during supernet training is tested with its checkpoints (test_supernet.py) and with Ray Train
# workers (test_distributed.py); here the search is killed, the phase whose state Ray holds.
@pytest.mark.parametrize("phase", ["search"])
def test_kill_9_then_resume_neither_repeats_nor_loses_trials(tmp_path, cifar, phase):
    path = space_file(tmp_path, cifar, supernet={"epochs": 3}, search={"num_trials": 10})
    env = {**os.environ, "MORF_SEARCH_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "morf_search", "run", str(path), "--name", "killed"],
                               cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = tmp_path / "runs" / "killed"
    if phase == "supernet":
        deadline = time.time() + 240
        while not (run / "supernet.state.pt").exists():
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.1)
    else:
        _wait_for_rows(run / "trials.csv", 3, process)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and every Ray process it started
    process.wait()
    before = pd.read_csv(run / "trials.csv") if (run / "trials.csv").exists() else pd.DataFrame()

    result = morf("run", str(path), "--name", "killed", "--resume", cwd=tmp_path)
    after = pd.read_csv(run / "trials.csv")
    assert len(after) == 10 and after["trial_id"].is_unique, after
    if len(before):
        kept = after.set_index("trial_id").loc[before["trial_id"]]
        assert (kept["arch"].values == before["arch"].values).all(), "finished trials changed on resume"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["phases"]["search"]["status"] == "done"
    if phase == "supernet":
        assert "resuming after epoch" in result.stderr
        assert [h["epoch"] for h in manifest["phases"]["supernet"]["history"]] == [1, 2, 3]


def test_a_trial_that_raises_is_recorded_and_the_search_goes_on(tmp_path):
    import ray
    from ray import tune

    from morf_search.rundir import RunDir
    from morf_search.search.engines.ray_tune import TrialRecorder

    (tmp_path / "run").mkdir()

    def trainable(config):
        if config["stage0"] == "k5-static":
            raise RuntimeError("this arch cannot be evaluated")
        tune.report({"accuracy": 50.0, "latency_ms": 1.0, "params": 10, "flops": 20, "status": "ok"})

    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="morf-test-"), log_to_driver=False)
    try:
        tuner = tune.Tuner(trainable, param_space={"stage0": tune.grid_search(["k3-static", "k5-static", "k7-static"])},
                           run_config=tune.RunConfig(storage_path=str(tmp_path / "engine"), verbose=0,
                                                     callbacks=[TrialRecorder(RunDir(tmp_path / "run").trials_csv, 1, None, 3)]))
        tuner.fit()
    finally:
        ray.shutdown()
    rows = pd.read_csv(RunDir(tmp_path / "run").trials_csv).set_index("arch")
    assert len(rows) == 3
    assert rows.loc["k5-static", "status"] == "error"
    assert "this arch cannot be evaluated" in rows.loc["k5-static", "message"]
    assert (rows.drop("k5-static")["status"] == "ok").all()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_search_through_an_existing_ray_cluster(tmp_path, cifar):
    port = _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    temp = Path("/tmp") / f"morf-test-ray-{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(ray_cli), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        path = space_file(tmp_path, cifar, search={"num_trials": 4})
        morf("run", str(path), "--name", "cluster", "--address", f"127.0.0.1:{port}", cwd=tmp_path)
        trials = pd.read_csv(tmp_path / "runs" / "cluster" / "trials.csv")
        assert len(trials) == 4 and (trials["status"] == "ok").all()
        assert not (tmp_path / "runs" / "cluster" / "engine" / "ray-tmp").exists(), "a joined cluster keeps its own temp"
    finally:  # this cluster only (`ray stop` would stop every Ray on the machine, other tests' included)
        stop_leftover_ray(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_standalone_evaluation_trains_each_trial_with_asha(tmp_path, cifar):
    path = space_file(tmp_path, cifar, search={"num_trials": 4, "evaluation": "standalone", "standalone_epochs": 2,
                                               "algorithm": "random"},
                      finalists={"top_k": 0})
    result = morf("run", str(path), "--name", "standalone", cwd=tmp_path)
    run = tmp_path / "runs" / "standalone"
    assert not (run / "supernet.safetensors").exists(), "standalone evaluation trains no supernet"
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 4 and set(trials["status"]) <= {"ok", "stopped"}
    assert trials["epochs"].between(1, 2).all() and (trials["epochs"] == 2).any()
    assert set(trials.loc[trials["epochs"] < 2, "status"]) <= {"stopped"}, "ASHA-stopped trials say so"
    assert "Traceback" not in result.stderr
