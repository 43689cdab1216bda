"""Data-parallel training on Ray Train: the one loop ``fit`` in every worker of a ``TorchTrainer``.

``train(job, workers, ...)`` runs ``job(replica)`` (a picklable callable that builds its
model and loader and calls ``fit(..., replica=replica)``) in this process when ``workers``
is 1, with no Ray, or in ``workers`` Ray Train workers with DDP (gloo on CPU, nccl on CUDA)
otherwise. ``data.batch_size`` stays the global batch: every worker takes its slice of the
same batches one process would train on, so results depend on the worker count only by
float noise. Rank 0 alone commits the run's checkpoint, which is also what a worker that
Ray Train restarts (``FailureConfig``) or a later ``--resume`` continues from, whatever the
worker count was. Inside a Ray Tune trial (``standalone`` trials of
``search.standalone_workers``) rank 0's epoch reports reach Tune as the trial's own.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader

from ..core.errors import UserError
from ..core.fileio import load_state
from ..core.ray_dirs import ray_session


class Replica:
    """This process's place in a training: here, the only one (no collectives)."""

    rank, world = 0, 1

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def shard(self, loader: DataLoader) -> DataLoader:
        return loader

    def mean(self, value: float) -> float:
        return value

    def gather(self, digest: str) -> List[str]:
        return [digest]

    def report(self, record: dict) -> None:
        """Every rank after every epoch, rank 0's ``record`` with its evaluation: nobody to tell here."""


class RayReplica(Replica):
    """A Ray Train worker: DDP over the process group Ray Train set up."""

    def __init__(self):
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()

    def wrap(self, model: nn.Module) -> nn.Module:
        from ray.train.torch import prepare_model

        # Every rank trains the same archs each step (same seeded sampler), so a parameter is
        # unused on all ranks or on none. The inactive experts of a step have no gradient, and
        # DDP's find_unused_parameters marks them ready without touching their .grad, which
        # stays None as in one process: the optimizer skips them exactly as it does there.
        return prepare_model(model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True})

    def shard(self, loader: DataLoader) -> DataLoader:
        """This rank's contiguous slice of each global batch, in the one-process order.

        Not ``prepare_data_loader``'s DistributedSampler: it would reorder the samples and
        make results depend on the worker count.
        """
        if loader.batch_size % self.world:
            raise UserError(f"data.batch_size: {loader.batch_size} does not split evenly over {self.world} workers")
        return DataLoader(loader.dataset, batch_sampler=_Slices(loader.batch_sampler, self.rank, self.world),
                          num_workers=loader.num_workers, generator=loader.generator,
                          persistent_workers=loader.persistent_workers)

    def mean(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.item() / self.world

    def gather(self, digest: str) -> List[str]:
        digests: List[Optional[str]] = [None] * self.world
        torch.distributed.all_gather_object(digests, digest)
        return digests

    def report(self, record: dict) -> None:
        """Ray Train's report, a barrier that every rank reaches; only rank 0's metrics travel on (to Tune)."""
        import ray.train

        ray.train.report(record if self.rank == 0 else {})


class _Slices:
    """Batches of ``batches`` cut to one rank's contiguous share."""

    def __init__(self, batches: BatchSampler, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.batches:
            share = len(batch) // self.world
            yield batch[self.rank * share:(self.rank + 1) * share]


def arch_digest(steps: Sequence[Sequence[object]]) -> str:
    """A short fingerprint of the archs trained at each step of an epoch, to compare ranks by."""
    return hashlib.sha256(repr([[str(a) for a in archs] for archs in steps]).encode()).hexdigest()[:16]


def see_only_assigned_gpus() -> None:
    """Ray sets CUDA_VISIBLE_DEVICES for a task or actor it gave GPUs, but leaves it unset for one it gave none,
    which would then use every GPU of its node: hide them (before anything in this process starts CUDA)."""
    import ray

    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def _worker(config: dict) -> None:
    import ray.train.torch

    see_only_assigned_gpus()
    torch.set_num_threads(config["threads"])
    if torch.cuda.is_available():  # "cuda" means this worker's GPU from here on
        torch.cuda.set_device(ray.train.torch.get_device())
    config["job"](RayReplica())


def session(workers: int, engine_dir: Path, address: Optional[str] = None) -> ContextManager:
    """One Ray session around a phase's several trainings when they run on workers (each ``train`` joins it)."""
    return ray_session(engine_dir, address) if workers > 1 else nullcontext()


def train(job: Callable[[Replica], List[dict]], workers: int, device: torch.device, state: Path,
          engine_dir: Path, name: str, address: Optional[str] = None, threads: Optional[int] = None,
          use_gpu: Optional[bool] = None, to_tune: bool = False) -> List[dict]:
    """Run ``job`` on ``workers`` replicas and return its history (read from its committed ``state``).

    Each worker asks Ray for ``threads`` CPUs (default: the cluster's shared evenly) and, when ``use_gpu``
    (default: ``device`` is CUDA), one GPU. ``to_tune``: this runs inside a Ray Tune trial, which reports
    rank 0's epochs as its own.
    """
    if workers == 1:
        return job(Replica())
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cuda = device.type == "cuda" if use_gpu is None else use_gpu
    with ray_session(engine_dir, address):
        import ray

        callbacks = []
        if to_tune:
            from ray.tune.integration.ray_train import TuneReportCallback

            callbacks.append(TuneReportCallback())
        threads = threads or max(1, int(ray.cluster_resources().get("CPU", workers)) // workers)
        trainer = TorchTrainer(
            _worker, train_loop_config={"job": job, "threads": threads},
            torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=cuda, resources_per_worker={"CPU": threads}),
            run_config=RunConfig(name=name, storage_path=str(Path(engine_dir, "train").resolve()),
                                 failure_config=FailureConfig(max_failures=2), callbacks=callbacks))
        trainer.fit()
    return list(load_state(state)["history"])
