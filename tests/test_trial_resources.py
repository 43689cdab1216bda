"""What each Ray trial requests, and that a trial sees only the GPUs Ray gave it."""
import os
import tempfile

import pytest

from morf_search.core.errors import UserError
from morf_search.search.engines.ray_tune import TrialResources, _see_only_assigned_gpus
from morf_search.space.schema import SearchConfig


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


def test_a_trial_sees_only_the_gpus_ray_gave_it():
    import ray

    @ray.remote
    def visible():
        if not ray.get_gpu_ids():
            os.environ["CUDA_VISIBLE_DEVICES"] = "0"  # what a GPU-less trial on a GPU node was seen to inherit
        _see_only_assigned_gpus()
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="morf-test-"))
    try:
        seen = {gpus: ray.get(visible.options(num_gpus=gpus).remote()) for gpus in (0, 1)}
    finally:
        ray.shutdown()
    assert seen == {0: "", 1: "0"}
