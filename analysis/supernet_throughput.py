"""What a supernet training step costs against the plain network it searches around.

Side by side in one process: a step of the space's supernet with a freshly sampled arch
(uniform rule), a sandwich step (largest + smallest + random arch), and a step of the same
network with one static kernel of each stage's largest candidate size. Target: uniform
step <= 1.5 x the single-kernel step.

    python analysis/supernet_throughput.py [--space search_spaces/quickstart.yaml] [--batch-size 128]
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from morf_search.latency.harness import environment, thread_count, time_side_by_side
from morf_search.layer import total_balance_loss
from morf_search.models.arch import Arch, StageSpec
from morf_search.space.schema import load_space
from morf_search.space.search_space import SearchSpace
from morf_search.training.supernet import SuperNet


def step_fn(model, archs, x, y):
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        for arch in archs():
            if arch is not None:
                model.set_arch(arch)
            loss = F.cross_entropy(model(x), y)
            balance = total_balance_loss(model)
            (loss if balance is None else loss + 0.01 * balance).backward()
        optimizer.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", type=Path, default=Path("search_spaces/quickstart.yaml"))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    config = load_space(args.space)
    space = SearchSpace(config)
    batch = args.batch_size or config.data.batch_size
    size = config.data.image_size
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    supernet = SuperNet(space, num_classes=10)
    rng = random.Random(0)
    largest_static = Arch(tuple(
        StageSpec((max((e for choice in choices for e in choice.experts), key=lambda e: (e.span, e.kernel_size)),),
                  "static")
        for choices in space.stages))
    plain = space.build_model(largest_static, 10).train()
    with thread_count(args.threads):
        env = environment()
        timings = time_side_by_side({
            "single static kernel (largest)": step_fn(plain, lambda: [None], x, y),
            "supernet, uniform": step_fn(supernet.model.train(), lambda: supernet.sample(rng, "uniform"), x, y),
            "supernet, sandwich": step_fn(supernet.model, lambda: supernet.sample(rng, "sandwich"), x, y),
        }, rounds=args.rounds, round_seconds=0.5, warmup=2)
    base = timings["single static kernel (largest)"].median_ms
    print(f"# {args.space}: batch {batch} at {size} px, {env['cpu']}, torch {env['torch']}, {env['threads']} threads")
    print(f"# single-kernel network: {largest_static}")
    print(f"{'training step':<32} {'median ms':>10} {'images/s':>9} {'x single':>9}")
    for name, timing in timings.items():
        ratio = timing.median_ms / base
        verdict = ("  ok (<= 1.5)" if ratio <= 1.5 else "  MISS (> 1.5)") if name == "supernet, uniform" else ""
        print(f"{name:<32} {timing.median_ms:10.1f} {batch / timing.median_ms * 1e3:9.0f} {ratio:9.2f}{verdict}")


if __name__ == "__main__":
    main()
