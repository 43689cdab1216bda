"""``morf-search bench MODEL``: latency, params and FLOPs of a network's training and deploy forms.

MODEL is a timm model name (MoRF ones take ``--arch``), an export directory, or an arch
string of a run (``--run RUN_DIR`` supplies the base model). Both forms are timed with the
same setup and backend (eager torch or ONNX Runtime), so the table shows what
re-parameterization saves.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Dict, Optional, Tuple

import timm
import torch.nn as nn

from .core.errors import UserError
from .core.fileio import read_json
from .finalists.export import load_export
from .latency.backends import get_backend
from .latency.cost import count_flops, count_params
from .latency.harness import environment, thread_count
from .latency.measurement import measure
from .latency.setup import LatencySetup
from .models.arch import Arch
from .models.base import MoRFModelMixin
from .rundir import RunDir


def _is_arch(text: str) -> bool:
    try:
        Arch.parse(text)
        return True
    except ValueError:
        return False


def resolve_forms(model: str, arch: Optional[str] = None, run_dir: Optional[str] = None
                  ) -> Tuple[str, Dict[str, Optional[nn.Module]], Tuple[int, int, int]]:
    """(label, {'train': module or None, 'deploy': module}, input size) for a MODEL argument."""
    path = Path(model)
    if path.is_dir():
        deployed = load_export(path)
        args = dict(read_json(path / "config.json").get("model_args", {}))
        train = None
        if isinstance(deployed, MoRFModelMixin):
            args.pop("deploy", None)
            train = timm.create_model(deployed.pretrained_cfg["architecture"], **args)
        return str(path), {"train": train, "deploy": deployed}, tuple(deployed.pretrained_cfg["input_size"])
    if _is_arch(model):
        if run_dir is None:
            raise UserError(f"{model}: an arch string needs --run RUN_DIR to know its base model")
        config = RunDir.open(Path(run_dir)).load_space()
        name, kwargs = config.model.timm_name, config.model.timm_kwargs()
        arch, size = model, config.data.image_size
    elif timm.is_model(model):
        name, kwargs, size = model, {}, None
    else:
        raise UserError(f"{model}: not a timm model name, an export directory or an arch string")
    if arch is not None:
        kwargs["arch"] = arch
    try:
        train = timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"{model}: cannot build it with these arguments ({err})") from None
    if not isinstance(train, MoRFModelMixin):
        return model, {"train": None, "deploy": train.eval()}, tuple(train.pretrained_cfg["input_size"])
    size = size or train.pretrained_cfg["input_size"][-1]
    deployed = timm.create_model(name, deploy=True, **kwargs).eval()
    return f"{name} {train.arch}", {"train": train.eval(), "deploy": deployed}, (3, size, size)


def bench(model: str, arch: Optional[str] = None, run_dir: Optional[str] = None, batch_size: int = 1,
          image_size: Optional[int] = None, threads: Optional[int] = None, device: str = "cpu",
          channels_last: bool = False, dtype: str = "float32", rounds: Optional[int] = None,
          backend: str = "torch") -> dict:
    label, forms, input_size = resolve_forms(model, arch, run_dir)
    if image_size:
        input_size = (input_size[0], image_size, image_size)
    setup = LatencySetup(input_size=input_size, batch_size=batch_size, device=device, threads=threads,
                         dtype=dtype, channels_last=channels_last, rounds=rounds or LatencySetup.rounds,
                         backend=backend)
    results = {}
    if backend != "torch":  # deploy tools run the deploy form; a training form's per-sample kernels do not export
        forms["train"] = None
    with thread_count(threads):
        for form, module in forms.items():
            if module is None:
                continue
            timing = measure(module, setup, deploy=form == "deploy")
            results[form] = {"median_ms": timing.median_ms, "p10_ms": timing.p10_ms, "p90_ms": timing.p90_ms,
                             "spread": timing.spread,
                             "noisy": timing.noisy, "params": count_params(module),
                             "flops": count_flops(module, input_size)}
        env = {**environment(device), **get_backend(backend).environment()}
    return {"model": label, "setup": asdict(setup), "environment": env, "forms": results}


def format_table(result: dict) -> str:
    setup = LatencySetup(**{**result["setup"], "input_size": tuple(result["setup"]["input_size"])})
    env = result["environment"]
    lines = [f"{result['model']}", f"{setup.describe()}; {env['cpu']}, torch {env['torch']}",
             f"{'form':<8} {'p10 ms':>9} {'median ms':>10} {'p90 ms':>9} {'spread':>7} {'params':>12} {'GFLOPs':>9}"]
    for form, r in result["forms"].items():
        flag = "  (noisy)" if r["noisy"] else ""
        lines.append(f"{form:<8} {r['p10_ms']:9.3f} {r['median_ms']:10.3f} {r['p90_ms']:9.3f} {r['spread']:7.2f} "
                     f"{r['params']:12,} "
                     f"{r['flops'] / 1e9:9.4f}{flag}")
    if "train" not in result["forms"]:
        lines.append("(deploy form only: the network is already plain, or the backend runs deploy forms only)")
    return "\n".join(lines)
