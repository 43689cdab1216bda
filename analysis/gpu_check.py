"""The CUDA figures of the README's "Scale out" section, in one process, without Ray.

1. Supernet training step (sandwich rule, the one loop ``fit``) in images/s: fp32 and bf16,
   each channels_last (as runs train on CUDA) and contiguous.
2. Deploy latency of the static MoRF-ConvNeXt-T (7x7 everywhere) against timm's
   ``convnext_tiny`` at batch 1 and 64, and of soft- and hard-routed MoRF-ConvNeXt-T against
   the static one (ratios; interleaved rounds, p10).

``--cpu-smoke`` runs the same code on CPU at toy sizes, so CI exercises it.
``analysis/gpu_check.sh`` runs this, then (when Ray is installed) 1 vs all GPUs and the quickstart.

    python analysis/gpu_check.py [--cpu-smoke]
"""
from __future__ import annotations

import argparse
import random
from unittest import mock

import timm
import torch
from torch.utils.data import TensorDataset

import morf_search  # noqa: F401  (registers the MoRF timm models)
from morf_search.latency.measurement import measure_side_by_side
from morf_search.latency.setup import LatencySetup
from morf_search.space.schema import parse_space
from morf_search.space.search_space import SearchSpace
from morf_search.training.data import make_loader
from morf_search.training.loop import fit
from morf_search.training.precision import Precision
from morf_search.training.supernet import SuperNet

FULL = {"model": "tiny", "image": 224, "batch": 64, "steps": 20, "rounds": 30, "batches": (1, 64)}
SMOKE = {"model": "atto", "image": 32, "batch": 4, "steps": 2, "rounds": 3, "batches": (1, 2)}


def step_rates(device: torch.device, sizes: dict) -> dict:
    """images/s of supernet training steps per precision and memory format (the second, warm epoch)."""
    config = parse_space({"model": {"family": "convnext", "size": sizes["model"]},
                          "data": {"image_size": sizes["image"], "batch_size": sizes["batch"]},
                          "space": {"kernels": [3, 5, 7], "max_experts": 2},
                          "supernet": {"epochs": 1, "warmup_epochs": 0, "sampling": "sandwich"}}, "gpu_check")
    count = sizes["batch"] * sizes["steps"]
    data = TensorDataset(torch.randn(count, 3, sizes["image"], sizes["image"]), torch.randint(0, 10, (count,)))
    loader = make_loader(data, sizes["batch"], 0, shuffle=True, drop_last=True)
    rates = {}
    for precision in ("fp32", "bf16"):
        for channels_last in (True, False):
            if channels_last and device.type != "cuda":
                continue  # training uses channels_last on CUDA only
            torch.manual_seed(0)
            supernet = SuperNet(SearchSpace(config), 10, device)
            recipe = config.supernet.model_copy(update={"precision": precision})
            with mock.patch.object(Precision, "channels_last", property(lambda self, cl=channels_last: cl)):
                history = fit(supernet.model, loader, recipe, device, sampler=supernet.sampler(recipe), epochs=2,
                              label=f"{precision} {'channels_last' if channels_last else 'contiguous'}")
            rates[(precision, channels_last)] = history[-1]["images_per_s"]
    return rates


def latencies(device: torch.device, sizes: dict) -> dict:
    """p10 ms of the deploy forms at each batch size: static, soft, hard MoRF-ConvNeXt and timm's ConvNeXt."""
    name = f"convnext_{sizes['model']}"
    archs = {"static": "k7-static", "soft": "k3.5.7-soft", "hard": "k3.5.7-hard"}
    results = {}
    for batch in sizes["batches"]:
        models = {mode: timm.create_model(f"morf_{name}", arch="_".join([stage] * 4)).eval()
                  for mode, stage in archs.items()}
        models["timm"] = timm.create_model(name).eval()
        setup = LatencySetup(input_size=(3, sizes["image"], sizes["image"]), batch_size=batch, device=str(device),
                             rounds=sizes["rounds"])
        results[batch] = {mode: m.latency_ms for mode, m in measure_side_by_side(models, setup).items()}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU: checks the script, not the GPU")
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run with --cpu-smoke to check the script on CPU")
    device, sizes = (torch.device("cpu"), SMOKE) if args.cpu_smoke else (torch.device("cuda"), FULL)
    random.seed(0)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)"
    print(f"device: {gpu}, torch {torch.__version__}, timm {timm.__version__}")
    rates = step_rates(device, sizes)
    base = rates.get(("fp32", device.type == "cuda"))
    print(f"\nsupernet training step, convnext_{sizes['model']} supernet, {sizes['image']} px, "
          f"batch {sizes['batch']}")
    print("| precision | memory format | images/s | vs fp32 |\n|---|---|---|---|")
    for (precision, channels_last), rate in rates.items():
        layout = "channels_last" if channels_last else "contiguous"
        print(f"| {precision} | {layout} | {rate:.1f} | {rate / base:.2f} |")
    print(f"\ndeploy latency (p10 ms), convnext_{sizes['model']}, {sizes['image']} px, fp32")
    print("| batch | MoRF static 7x7 | timm convnext | static / timm | soft | soft / static | hard | hard / static |")
    print("|---|---|---|---|---|---|---|---|")
    for batch, ms in latencies(device, sizes).items():
        print(f"| {batch} | {ms['static']:.3f} | {ms['timm']:.3f} | {ms['static'] / ms['timm']:.2f} | "
              f"{ms['soft']:.3f} | {ms['soft'] / ms['static']:.2f} | "
              f"{ms['hard']:.3f} | {ms['hard'] / ms['static']:.2f} |")


if __name__ == "__main__":
    main()
