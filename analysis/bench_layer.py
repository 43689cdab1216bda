"""Benchmark one MoRF layer against the alternatives it replaces.

For each shape, batch and routing mode, times side by side in one process:
  (a) one convolution per expert, outputs mixed (the naive mixture),
  (b) the fused training form (MoRFConv2d),
  (c) the deploy form (after fuse()),
  (d) a plain depthwise nn.Conv2d of the largest kernel,
and a training step (forward + backward) of (a), (b) and (d). Prints a table, writes JSON.

    python analysis/bench_layer.py [--quick] [--threads N] [--out runs/bench/bench_layer.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from morf_search import MoRFConv2d
from morf_search.latency.harness import environment, paired_ratio, thread_count, time_side_by_side

SHAPES = [(96, 28), (384, 7)]
BATCHES = [1, 32]
EXPERTS = [3, 5, 7, 9]
ROUTINGS = ["static", "soft", "hard"]
TARGETS = {  # (ratio, routing, batch or None for all) -> bound; "max" bounds from above
    "deploy/plain": {"static": ("max", 1.02, None), "soft": ("max", 1.3, 32), "hard": ("max", 1.3, 32)},
    "fused step/plain step": {"static": ("max", 1.5, None), "soft": ("max", 2.0, None), "hard": ("max", 2.0, None)},
    "per-expert/fused": {r: ("min", 3.0, 32) for r in ROUTINGS},
}


class PerExpertMoRF(nn.Module):
    """The naive mixture: every expert convolves the input, then outputs are mixed."""

    def __init__(self, layer: MoRFConv2d):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        layer = self.layer
        outs = torch.stack([
            F.conv2d(x, w, b, layer.stride, e.span // 2, e.dilation, layer.groups)
            for w, b, e in zip(layer.weights, layer.biases, layer.experts)])  # (E, B, C, H, W)
        if layer.routing == "static":
            mix = torch.softmax(layer.static_logits, 0)[:, None, :, None, None]
        else:
            logits = layer.router(x) / layer.tau
            if layer.routing == "hard":
                top = logits.topk(layer.top_k, 1)
                logits = torch.full_like(logits, float("-inf")).scatter(1, top.indices, top.values)
            mix = torch.softmax(logits, 1).t()[:, :, None, None, None]
        return (mix * outs).sum(0)


def forward_fn(module, x):
    def run():
        module.eval()
        with torch.no_grad():
            module(x)
    return run


def step_fn(module, x, grad):
    def run():
        module.train()
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad)
    return run


def bench_config(channels, size, batch, rounds, round_seconds):
    """Forwards and training steps, each group interleaved on its own.

    A backward pass leaves caches and memory in another state than a forward, so mixing the
    two in one rotation would charge forwards for the steps before them.
    """
    x = torch.randn(batch, channels, size, size)
    x_train = x.clone().requires_grad_(True)
    grad = torch.randn(batch, channels, size, size)
    plain = nn.Conv2d(channels, channels, max(EXPERTS), padding=max(EXPERTS) // 2, groups=channels)
    forwards, steps = {"plain": forward_fn(plain, x)}, {"plain step": step_fn(plain, x_train, grad)}
    for routing in ROUTINGS:
        layer = MoRFConv2d(channels, channels, EXPERTS, routing, groups=channels)
        naive = PerExpertMoRF(layer)
        deploy = layer.eval().fuse()
        forwards[f"{routing} per-expert"] = forward_fn(naive, x)
        forwards[f"{routing} fused"] = forward_fn(layer, x)
        forwards[f"{routing} deploy"] = forward_fn(deploy, x)
        steps[f"{routing} per-expert step"] = step_fn(naive, x_train, grad)
        steps[f"{routing} fused step"] = step_fn(layer, x_train, grad)
    return {**time_side_by_side(forwards, rounds=rounds, round_seconds=round_seconds),
            **time_side_by_side(steps, rounds=rounds, round_seconds=round_seconds)}


def verdict(ratio_name, routing, batch, value):
    kind, bound, only_batch = TARGETS[ratio_name][routing]
    if only_batch is not None and batch != only_batch:
        return ""
    ok = value <= bound if kind == "max" else value >= bound
    return f"{'ok' if ok else 'MISS'} ({'<=' if kind == 'max' else '>='}{bound})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (noisier)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("runs/bench/bench_layer.json"))
    args = parser.parse_args()
    rounds, round_seconds = (5, 0.02) if args.quick else (25, 0.05)
    rows = []
    with thread_count(args.threads):
        env = environment()
        print(f"# MoRF layer, experts {EXPERTS}, depthwise, fp32, {env['cpu']}, torch {env['torch']}, "
              f"{env['threads']} threads, allocator: {env['allocator']}; medians of {rounds} interleaved rounds, ms; "
              "ratios: median over rounds of the ratio within each round")
        print("# static (c) is an nn.Conv2d of the same shape as (d): their ratio shows the measurement's own noise")
        header = (f"{'C@HxW':>8} {'B':>3} {'routing':>7} | {'(a)naive':>9} {'(b)fused':>9} {'(c)deploy':>9} "
                  f"{'(d)plain':>9} | {'step a':>8} {'step b':>8} {'step d':>8} | {'c/d':>5} {'b/d step':>8} {'a/b':>5} "
                  f"{'c/d p10-p90':>10}")
        print(header)
        for channels, size in SHAPES:
            for batch in BATCHES:
                t = bench_config(channels, size, batch, rounds, round_seconds)
                for routing in ROUTINGS:
                    row = {
                        "channels": channels, "size": size, "batch": batch, "routing": routing,
                        **{f"{key}_ms": t[name].median_ms for key, name in [
                            ("naive", f"{routing} per-expert"), ("fused", f"{routing} fused"),
                            ("deploy", f"{routing} deploy"), ("plain", "plain"),
                            ("naive_step", f"{routing} per-expert step"), ("fused_step", f"{routing} fused step"),
                            ("plain_step", "plain step")]},
                        "max_spread": max(x.spread for x in t.values()),
                    }
                    for ratio, (candidate, reference) in {
                            "deploy/plain": (f"{routing} deploy", "plain"),
                            "fused step/plain step": (f"{routing} fused step", "plain step"),
                            "per-expert/fused": (f"{routing} per-expert", f"{routing} fused")}.items():
                        row[ratio], *row[f"{ratio} p10-p90"] = paired_ratio(t[candidate], t[reference])
                    row["verdicts"] = {k: verdict(k, routing, batch, row[k]) for k in TARGETS}
                    rows.append(row)
                    low, high = row["deploy/plain p10-p90"]
                    marks = " ".join(v for v in row["verdicts"].values() if v.startswith("MISS"))
                    print(f"{channels:>4}@{size:<3} {batch:>3} {routing:>7} | {row['naive_ms']:9.3f} "
                          f"{row['fused_ms']:9.3f} {row['deploy_ms']:9.3f} {row['plain_ms']:9.3f} | "
                          f"{row['naive_step_ms']:8.3f} {row['fused_step_ms']:8.3f} {row['plain_step_ms']:8.3f} | "
                          f"{row['deploy/plain']:5.2f} {row['fused step/plain step']:8.2f} "
                          f"{row['per-expert/fused']:5.2f} {low:5.2f}-{high:4.2f} {marks}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "targets": TARGETS, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
