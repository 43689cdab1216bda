"""What each Ray trial requests, and that a trial sees only the GPUs Ray gave it."""
import os
import tempfile

import pytest

from morf_search.core.errors import UserError
from morf_search.search.engines.ray_tune import DRIVER_MEMORY, TrialResources
from morf_search.space.schema import SearchConfig, parse_space
from morf_search.training.distributed import see_only_assigned_gpus


def plan(device="auto", cluster=None, **search):
    return TrialResources.plan(SearchConfig(**search), device, cluster or {"CPU": 16})


def test_gpus_are_requested_only_where_the_run_may_use_cuda_and_the_cluster_has_them():
    assert plan(cluster={"CPU": 16}) == TrialResources(cpus=4, gpus=0.0, concurrency=4)
    assert plan("cpu", {"CPU": 16, "GPU": 2}) == TrialResources(cpus=4, gpus=0.0, concurrency=4)
    assert plan("auto", {"CPU": 16, "GPU": 2}, evaluation="standalone") == TrialResources(8, 1.0, 2)
    assert plan("cuda", {"CPU": 16, "GPU": 2}) == TrialResources(2, 0.25, 8), "one-shot trials share a GPU by four"
    assert plan("cuda", {"CPU": 16, "GPU": 2}, gpus_per_trial=0.5, concurrency=3) == TrialResources(5, 0.5, 3)
    with pytest.raises(UserError, match="search.gpus_per_trial: 2 is more than the 1 GPUs"):
        plan("cuda", {"CPU": 4, "GPU": 1}, gpus_per_trial=2)


def test_a_trial_on_several_workers_asks_only_memory_for_itself_and_counts_its_workers_in_the_concurrency():
    two = plan(evaluation="standalone", standalone_workers=2)
    assert two == TrialResources(cpus=4, gpus=0.0, concurrency=2, workers=2), "16 CPUs: 2 trials x 2 workers x 4"
    assert two.trial_request() == {"cpu": 0, "memory": DRIVER_MEMORY}, "its workers ask for the CPUs"
    assert plan(evaluation="standalone").trial_request() == {"cpu": 4, "gpu": 0.0}
    assert plan(cluster={"CPU": 2}, evaluation="standalone", standalone_workers=2) == TrialResources(1, 0.0, 1, 2)
    assert plan("auto", {"CPU": 16, "GPU": 4}, evaluation="standalone", standalone_workers=2) == \
        TrialResources(cpus=4, gpus=1.0, concurrency=2, workers=2), "one GPU per worker, 4 GPUs hold 2 trials"
    assert plan(standalone_workers=2) == TrialResources(4, 0.0, 4), "one-shot trials train nothing"
    with pytest.raises(UserError, match="search.gpus_per_trial: 1 for 2 standalone_workers; expected 0 or 2"):
        plan("cuda", {"CPU": 16, "GPU": 4}, evaluation="standalone", standalone_workers=2, gpus_per_trial=1)
    with pytest.raises(UserError, match="search.standalone_workers: 2 needs the ray engine"):
        parse_space({"search": {"engine": "nni", "algorithm": "random", "standalone_workers": 2}}, "space.yaml")


def test_a_trial_sees_only_the_gpus_ray_gave_it():
    import ray

    @ray.remote
    def visible():
        if not ray.get_gpu_ids():
            os.environ["CUDA_VISIBLE_DEVICES"] = "0"  # what a GPU-less trial on a GPU node was seen to inherit
        see_only_assigned_gpus()
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="morf-test-"))
    try:
        seen = {gpus: ray.get(visible.options(num_gpus=gpus).remote()) for gpus in (0, 1)}
    finally:
        ray.shutdown()
    assert seen == {0: "", 1: "0"}
