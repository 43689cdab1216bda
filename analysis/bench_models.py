"""Whole-network latency of MoRF models against the timm models they extend.

Side by side in one process (interleaved rounds), per batch size: the deploy form and the
training form of MoRF-ConvNeXt-tiny with every stage ``k3.5.7-static`` / ``-soft`` /
``-hard`` against timm ``convnext_tiny``, and MoRF-ResNet-50 ``k1.3-static`` / ``k1.3.5-soft``
against timm ``resnet50`` at 224 px; the small-input variants at 32 px against their plain
equivalents. Params and FLOPs (torch.utils.flop_counter, per image) beside each. A control
row times each group's reference a second time, so every ratio can be read against what two
identical models differ by on the same machine.

    python analysis/bench_models.py [--batches 1 16] [--threads N] [--rounds R] [--groups convnext_tiny ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
from timm.utils import reparameterize_model

import morf_search  # noqa: F401  (registers the models)
from morf_search import to_plain_convnext
from morf_search.latency.cost import count_flops, count_params
from morf_search.latency.harness import environment, paired_ratio, thread_count, time_side_by_side


def uniform(stage: str) -> str:
    """The same stage in all four stages, e.g. ``k3.5.7-soft`` -> ``k3.5.7-soft_..._k3.5.7-soft``."""
    return "_".join([stage] * 4)


# (group, input px, plain reference builder, [(label, morf model name, arch, deploy target ratio)])
GROUPS = [
    ("convnext_tiny", 224, lambda: timm.create_model("convnext_tiny"), "morf_convnext_tiny", [
        ("k3.5.7-static", 1.02), ("k3.5.7-soft", 1.15), ("k3.5.7-hard", 1.15)]),
    ("resnet50", 224, lambda: timm.create_model("resnet50"), "morf_resnet50", [
        ("k1.3-static", 1.02), ("k1.3.5-soft", None)]),
    ("convnext_cifar", 32, lambda: to_plain_convnext(
        timm.create_model("morf_convnext_cifar", arch=uniform("k3.5.7-static"))), "morf_convnext_cifar", [
        ("k3.5.7-static", 1.02), ("k3.5.7-soft", 1.15), ("k3.5.7-hard", 1.15)]),
    ("resnet_cifar", 32, lambda: reparameterize_model(
        timm.create_model("morf_resnet_cifar", arch=uniform("k3-static"))), "morf_resnet_cifar", [
        ("k1.3-static", 1.02), ("k1.3.5-soft", None)]),
]


def forward(model, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def bench_group(name, size, make_plain, morf_name, stages, batch, rounds):
    x = torch.randn(batch, 3, size, size)
    reference = f"timm {name}" if size == 224 else f"plain {name}"
    models = {reference: make_plain().eval()}
    targets = {}
    for stage, target in stages:
        train_form = timm.create_model(morf_name, arch=uniform(stage)).eval()
        models[f"{stage} deploy"] = reparameterize_model(train_form)
        models[f"{stage} train-form"] = train_form
        targets[f"{stage} deploy"] = target
    models["control: reference again"] = make_plain().eval()  # same model, last in the round: the noise floor
    timings = time_side_by_side({k: forward(m, x) for k, m in models.items()}, rounds=rounds, round_seconds=0.2)
    plain = timings[reference]
    rows = []
    for label, model in models.items():
        t = timings[label]
        target = targets.get(label)
        ratio, low, high = paired_ratio(t, plain)
        rows.append(dict(
            group=name, model=label, batch=batch, input=size, median_ms=t.median_ms, p90_ms=t.p90_ms,
            spread=t.spread, ratio=ratio, ratio_p10=low, ratio_p90=high, target=target,
            meets=None if target is None else ratio <= target,
            params_m=count_params(model) / 1e6, gflops=count_flops(model, (3, size, size)) / 1e9))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--groups", nargs="+", choices=[g[0] for g in GROUPS], default=[g[0] for g in GROUPS],
                        help="which comparisons to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/bench_models.json"))
    args = parser.parse_args()
    rows = []
    with thread_count(args.threads):
        env = environment()
        print(f"# {env['cpu']}, torch {env['torch']}, {env['threads']} threads, allocator: {env['allocator']}, "
              f"fp32, NCHW; median of {args.rounds} interleaved rounds; ratio = median over rounds of "
              "latency / the group's plain reference in the same round, with its p10-p90")
        print("# the control row times the reference model again, last in each round: its ratio is what "
              "identical models differ by here")
        print(f"{'group':<15} {'model':<25} {'B':>3} {'px':>4} {'median ms':>10} {'p90 ms':>9} {'ratio':>6} "
              f"{'p10-p90':>9} {'target':>12} {'params M':>9} {'GFLOPs':>7}")
        for name, size, make_plain, morf_name, stages in GROUPS:
            if name not in args.groups:
                continue
            for batch in args.batches:
                for row in bench_group(name, size, make_plain, morf_name, stages, batch, args.rounds):
                    rows.append(row)
                    target = "" if row["target"] is None else f"<={row['target']}{'' if row['meets'] else ' MISS'}"
                    print(f"{row['group']:<15} {row['model']:<25} {batch:>3} {size:>4} {row['median_ms']:10.2f} "
                          f"{row['p90_ms']:9.2f} {row['ratio']:6.2f} {row['ratio_p10']:4.2f}-{row['ratio_p90']:4.2f} "
                          f"{target:>12} {row['params_m']:9.2f} "
                          f"{row['gflops']:7.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
