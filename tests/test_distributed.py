"""Training on Ray Train workers (gloo, one thread each) against the same training in one process: the supernet,
a finalist's fine-tuning, and standalone trials inside Ray Tune."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from types import SimpleNamespace

import pytest
import torch

from morf_search import phases
from morf_search.context import RunContext
from morf_search.core.fileio import load_state, load_weights
from morf_search.finalists.finalize import Finalizer
from morf_search.phases import train_supernet_phase
from morf_search.rundir import RunDir
from morf_search.search.engines import SearchOutcome, get_engine
from morf_search.search.trials import TrialLog
from morf_search.space.schema import dump_space, parse_space
from morf_search.training.distributed import Replica
from morf_search.training.loop import Checkpoint, fit

# Deterministic data (no flip, no resizing) so that one process and two workers see the same pixels.
TINY = {
    "model": {"family": "convnext", "size": "cifar", "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]},
    "data": {"dataset": "embedded", "image_size": 24, "batch_size": 16,
             "embedded": {"num_train": 64, "num_val": 16},
             "augmentation": {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0}},
    "space": {"stages": [{"kernels": [3, 5]}, {"kernels": [3, 5]}, {"kernels": [3]}, {"kernels": [3]}]},
    "supernet": {"epochs": 1, "warmup_epochs": 0, "sampling": "sandwich"},
    "search": {"eval_images": 16},
}


def tiny_run(path, epochs=1, **sections):
    config = parse_space({**TINY, "supernet": {**TINY["supernet"], "epochs": epochs}, **sections})
    return RunDir.create(path, dump_space(config), config.seed, "test")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="morf-dt-"))
    yield
    ray.shutdown()


def test_two_gloo_workers_train_as_one_process_does(tmp_path, local_ray):
    one, two = tiny_run(tmp_path / "one"), tiny_run(tmp_path / "two")
    torch.set_num_threads(1)
    train_supernet_phase(RunContext(one), workers=1)
    train_supernet_phase(RunContext(two), workers=2)
    (h1,), (h2,) = (run.manifest()["phases"]["supernet"]["history"] for run in (one, two))
    assert two.manifest()["phases"]["supernet"]["workers"] == 2
    # Every rank checked at the epoch's end that all ranks trained the same archs (fit raises otherwise);
    # here they are also the very archs of the one-process run, step by step.
    assert h2["arch_digest"] == h1["arch_digest"]
    # Same global batches, gradients averaged over two halves instead of summed in one: only the order of
    # float additions differs (and the balance loss, which is per half), so losses and weights agree closely.
    assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-4)
    w1, w2 = load_weights(one.supernet_weights), load_weights(two.supernet_weights)
    for name, value in w1.items():
        torch.testing.assert_close(w2[name], value, atol=1e-4, rtol=1e-3, msg=name)


class _Split(Replica):
    """A replica whose other rank claims to have trained different archs."""

    world = 2

    def gather(self, digest):
        return [digest, "something else"]


def test_ranks_that_trained_different_archs_stop_the_training(tmp_path):
    context = RunContext(tiny_run(tmp_path / "run"))
    supernet = context.new_supernet()
    with pytest.raises(RuntimeError, match="ranks trained different archs"):
        fit(supernet.model, context.train_loader(), context.config.supernet, context.device,
            sampler=supernet.sampler(context.config.supernet), replica=_Split(), label="split")


def test_a_killed_two_worker_run_resumes_with_one_worker(tmp_path, capfd):
    run = tiny_run(tmp_path / "run", epochs=3)
    driver = ("import sys; from morf_search.context import RunContext; from morf_search.rundir import RunDir; "
              "from morf_search.phases import train_supernet_phase; "
              "train_supernet_phase(RunContext(RunDir.open(sys.argv[1])), workers=2)")
    process = subprocess.Popen([sys.executable, "-c", driver, str(run.path)], env=os.environ,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    state = run.path / "supernet.state.pt"
    while not state.exists():
        assert time.time() < deadline and process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray it started, after epoch 1
    process.wait()
    assert torch.load(state, weights_only=True)["epoch"] < 3, "killed before the training finished"
    run = RunDir.open(run.path)
    train_supernet_phase(RunContext(run), workers=1)
    history = json.loads((run.path / "manifest.json").read_text())["phases"]["supernet"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["arch_digest"]


def test_a_finalist_fine_tunes_on_two_workers_as_in_one_process(tmp_path, local_ray):
    trained = {}
    for workers in (1, 2):  # no supernet in these runs: the finalist starts from fresh weights, seeded
        context = RunContext(tiny_run(tmp_path / f"workers{workers}", finalists={"epochs": 1, "workers": workers}))
        arch = context.space.largest()
        model = Finalizer(context).fine_tune(arch, epochs=1, seed=0)
        history = load_state(Checkpoint.in_dir(context.run.finalist_dir(arch), "finetune").state)["history"]
        trained[workers] = history, model.state_dict()
    (h1,), w1 = trained[1]
    (h2,), w2 = trained[2]
    assert any((tmp_path / "workers2" / "engine" / "train").glob("finetune-*")), "Ray Train ran the fine-tuning"
    assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-4)  # same tolerance and reason as the supernet's
    for name, value in w1.items():
        torch.testing.assert_close(w2[name], value, atol=1e-4, rtol=1e-3, msg=name)


def test_a_standalone_search_trains_each_trial_on_two_workers_and_tune_sees_every_epoch(tmp_path, local_ray):
    # The local Ray has 2 CPUs: a trial asks none for itself (it only drives its trainer), its 2 workers 1 each.
    search = {**TINY["search"], "evaluation": "standalone", "standalone_epochs": 2, "standalone_workers": 2,
              "num_trials": 2, "algorithm": "random"}
    context = RunContext(tiny_run(tmp_path / "run", search=search))
    assert get_engine("ray").search(context, 2, 0, resume=False).finished
    trials = TrialLog(context.run.trials_csv).frame()
    assert list(trials["status"]) == ["ok", "ok"], trials[["status", "message"]]
    assert trials["accuracy"].between(0, 100).all() and trials["latency_ms"].gt(0).all()
    assert list(trials["epochs"]) == [2, 2], "rank 0's report of each epoch reached Tune"
    assert len(list((context.run.engine_dir / "train").glob("standalone-*"))) == 2, "one TorchTrainer per trial"
    assert not (context.run.engine_dir / "standalone").exists(), "the trials' states are removed"


def test_the_manifest_records_the_workers_of_a_standalone_search_and_of_the_finalists(tmp_path, monkeypatch):
    run = tiny_run(tmp_path / "run", search={"evaluation": "standalone", "standalone_workers": 2},
                   finalists={"workers": 3})
    monkeypatch.setattr(phases, "warm_latency_table", lambda space, classes: 0)
    monkeypatch.setattr(phases, "get_engine", lambda name: SimpleNamespace(search=lambda *args: SearchOutcome(0, 2)))
    monkeypatch.setattr(phases, "run_finalists", lambda context, address: None)  # what it trains is tested above
    context = RunContext(run)
    assert phases._search_phase(context, False, None) == phases.STOPPED
    phases._finalists_phase(context, None)
    recorded = run.manifest()["phases"]
    assert recorded["search"]["workers"] == 2 and recorded["finalists"]["workers"] == 3
    assert recorded["finalists"]["device"] == str(context.device) and recorded["finalists"]["precision"]
