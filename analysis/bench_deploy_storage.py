"""What storing a routed deploy form unpadded costs: file size, load time and latency, side by side.

The deploy form of a soft/hard MoRF layer keeps its expert bank padded to the largest kernel
(one convolution per sample at one size). Its state dict stores each expert at its own size
and loading pads it again; this prints, for MoRF-ResNet-50 archs, the parameters of the
training form, of the deploy form in memory and as stored, the safetensors file size of the
padded and the unpadded state dict, the time to load each into a fresh deploy model, and the
latency of the two loaded models (the same module, so any difference is noise).

    python analysis/bench_deploy_storage.py [--image-size 160] [--rounds 20]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.utils import reparameterize_model
from torch.utils import benchmark

import morf_search  # noqa: F401  (registers the models)
from morf_search.latency.cost import count_params
from morf_search.layer.deploy import DynamicMoRFConv2d

ARCHS = ("k1.3.5-soft_k1.3.5-soft_k1.3.5-soft_k1.3.5-soft", "k3.5-hard_k3d2.5-soft_k3.5-hard_k3-static")


def padded_state(model: torch.nn.Module) -> dict:
    """The state dict as exports stored it before: every routed layer's padded bank as one tensor."""
    state = dict(model.state_dict())
    for name, layer in model.named_modules():
        if isinstance(layer, DynamicMoRFConv2d):
            for expert in layer.experts:
                del state[f"{name}.bank_k{expert}"]
            state[f"{name}.bank"] = layer.bank.detach()
    return state


def load_seconds(arch: str, path: Path) -> tuple:
    model = timm.create_model("morf_resnet50", arch=arch, deploy=True).eval()
    started = time.perf_counter()
    model.load_state_dict(load_file(path))
    return time.perf_counter() - started, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(1, 3, args.image_size, args.image_size)
    print(f"MoRF-ResNet-50, batch 1 at {args.image_size} px, 1 thread, torch {torch.__version__}")
    for arch in ARCHS:
        training = timm.create_model("morf_resnet50", arch=arch).eval()
        deployed = reparameterize_model(training)
        with tempfile.TemporaryDirectory() as folder:
            files = {"padded": Path(folder, "padded.safetensors"), "unpadded": Path(folder, "unpadded.safetensors")}
            save_file({k: v.contiguous() for k, v in padded_state(deployed).items()}, files["padded"])
            save_file({k: v.contiguous() for k, v in deployed.state_dict().items()}, files["unpadded"])
            loaded = {kind: load_seconds(arch, path) for kind, path in files.items()}
            sizes = {kind: path.stat().st_size / 1e6 for kind, path in files.items()}
        print(f"\n{arch}")
        print(f"  parameters: training {sum(p.numel() for p in training.parameters()) / 1e6:.1f} M, deploy in memory "
              f"{sum(p.numel() for p in deployed.parameters()) / 1e6:.1f} M, stored {count_params(deployed) / 1e6:.1f} M")
        with torch.no_grad():
            same = all(torch.equal(model(x), deployed(x)) for _, model in loaded.values())
        for kind, (seconds, model) in loaded.items():
            timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=1)
            with torch.no_grad():
                latency = timer.blocked_autorange(min_run_time=args.rounds * 0.05).median * 1e3
            print(f"  {kind:>8}: file {sizes[kind]:6.1f} MB, load {seconds:5.2f} s, latency {latency:6.2f} ms")
        print(f"  outputs of both loaded models equal the deployed model's: {same}")


if __name__ == "__main__":
    main()
