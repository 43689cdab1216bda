"""What data-parallel supernet training costs on this machine: 1 process x T threads vs T workers x 1 thread.

Trains one supernet epoch of a space (default: the quickstart on a slice of the embedded
data) through the same code as ``morf-search run``: in one process with one thread and
with T threads, then as a Ray Train ``TorchTrainer`` of T one-thread gloo workers at the
same global batch. Prints images/s of each, the workers' ratio to the T-thread process,
and the time of one all-reduce of the supernet's gradients between the workers (the price
DDP pays per backward; it buckets it and overlaps it with the backward pass, and a sandwich
step runs three). On 2 cores a speed-up over 2 busy threads means the threads were the
problem (a shared, loaded machine), not that data parallelism adds compute.

    python analysis/bench_distributed.py [--space search_spaces/quickstart.yaml] [--workers 2] [--images 2048]
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from morf_search.context import RunContext
from morf_search.core.fileio import read_json, write_json
from morf_search.core.ray_dirs import ray_temp_dir
from morf_search.phases import train_supernet_phase
from morf_search.rundir import RunDir
from morf_search.space.schema import dump_space, load_space, parse_space
from morf_search.space.search_space import SearchSpace
from morf_search.training.supernet import SuperNet


def one_epoch(config, root: Path, name: str, workers: int) -> dict:
    run = RunDir.create(root / name, dump_space(config), config.seed, "bench_distributed")
    train_supernet_phase(RunContext(run), workers=workers)
    return run.manifest()["phases"]["supernet"]["history"][-1]


def _all_reduce(config: dict) -> None:
    import ray.train.torch

    torch.set_num_threads(1)
    grads = torch.randn(config["numel"], device=ray.train.torch.get_device())
    times = []
    for _ in range(config["rounds"]):
        began = time.perf_counter()
        torch.distributed.all_reduce(grads)
        if grads.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    if torch.distributed.get_rank() == 0:
        write_json(Path(config["out"]), {"median_s": statistics.median(times[2:])})


def all_reduce_seconds(numel: int, workers: int, root: Path, cuda: bool, rounds: int = 22) -> float:
    out = root / "all_reduce.json"
    TorchTrainer(_all_reduce, train_loop_config={"numel": numel, "rounds": rounds, "out": str(out)},
                 torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
                 scaling_config=ScalingConfig(num_workers=workers, use_gpu=cuda),
                 run_config=RunConfig(name="all_reduce", storage_path=str(root / "storage"))).fit()
    return read_json(out)["median_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", type=Path, default=Path("search_spaces/quickstart.yaml"))
    parser.add_argument("--workers", type=int, default=2, help="workers of one thread each (= threads of the 1x run)")
    parser.add_argument("--images", type=int, default=2048, help="training images of the embedded data")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: 1 GPU vs --workers GPUs")
    args = parser.parse_args()
    data = load_space(args.space).model_dump(mode="json")
    data["supernet"].update(epochs=1, warmup_epochs=0)
    data["device"] = args.device
    data["search"]["eval_images"] = data["data"]["batch_size"]
    if data["data"]["dataset"] == "embedded":
        data["data"]["embedded"]["num_train"] = args.images
    config = parse_space(data, "bench_distributed")
    supernet = SuperNet(SearchSpace(config), 10)
    numel = sum(p.numel() for p in supernet.model.parameters())
    archs_per_step = len(supernet.sample(random.Random(0), config.supernet.sampling, config.supernet.distillation))
    with tempfile.TemporaryDirectory(prefix="morf-bench-dist-") as tmp:
        root = Path(tmp)
        torch.set_num_threads(1)
        one_thread = one_epoch(config, root, "one-thread", 1)
        torch.set_num_threads(args.workers)
        single = one_epoch(config, root, "single", 1)
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                 _temp_dir=ray_temp_dir(root / "engine"))
        try:
            parallel = one_epoch(config, root, "parallel", args.workers)
            reduce_s = all_reduce_seconds(numel, args.workers, root, args.device == "cuda")
        finally:
            ray.shutdown()
    steps = args.images // config.data.batch_size
    print(f"space {args.space}, global batch {config.data.batch_size}, {steps} steps, "
          f"sampling {config.supernet.sampling}, {numel / 1e6:.2f} M supernet parameters")
    one, many = ((f"1 process x {args.workers} threads", f"{args.workers} workers x 1 thread")
                 if args.device == "cpu" else ("1 GPU", f"{args.workers} GPUs"))
    if args.device == "cpu":
        print(f"1 process x 1 thread: {one_thread['images_per_s']:8.1f} images/s (what each worker has)")
    print(f"{one}: {single['images_per_s']:8.1f} images/s")
    print(f"{many}: {parallel['images_per_s']:8.1f} images/s")
    print(f"ratio (workers / process): {parallel['images_per_s'] / single['images_per_s']:.2f}")
    print(f"one all-reduce of the gradients ({numel * 4 / 2**20:.1f} MiB): {reduce_s * 1e3:.2f} ms "
          f"(x{archs_per_step} per step, one backward per arch)")
    print(f"losses: process {single['loss']:.4f}, workers {parallel['loss']:.4f}")


if __name__ == "__main__":
    main()
