"""Winners: fine-tune each finalist, re-parameterize, verify, re-measure and export it.

Each finalist is fine-tuned from the supernet's weights (resumable), re-parameterized,
checked against its training form on validation images, timed in both forms and exported
in timm's layout (with ONNX when ``export.onnx`` or ``--onnx`` asks for it).
"""
from __future__ import annotations

from typing import Dict, Optional

import pandas as pd
import torch
from timm.utils import reparameterize_model

from ..core.fileio import atomic_write, write_json
from ..core.progress import say
from ..latency.cost import count_flops, count_params
from ..latency.measurement import measure
from ..models.arch import Arch
from ..search.trials import TrialLog
from ..training.evaluate import recalibrate_batchnorm, top1_accuracy
from ..training.loop import Checkpoint, fit
from ..training.routing_stats import routing_statistics
from .export import build_deploy_model, export_model, exportable, model_card
from .select import select_finalists

VERIFY_TOLERANCE = 1e-5


class Finalizer:
    """Fine-tunes and exports archs of one run, sharing data and supernet across them."""

    def __init__(self, context):
        self.context = context
        self.run, self.config, self.space = context.run, context.config, context.space
        self.device, self.setup = context.device, context.latency_setup
        self.val = context.val_batches

    def starting_model(self, arch: Arch) -> torch.nn.Module:
        """Inherited supernet weights (BatchNorm re-estimated where the family has it), or a fresh model."""
        supernet = self.context.supernet
        if supernet is None:
            return self.space.build_model(arch, self.context.num_classes).to(self.device)
        model = supernet.extract(arch)
        if self.context.calibration_batches:
            recalibrate_batchnorm(model, self.context.calibration_batches, self.device)
        return model

    def finalize(self, arch: Arch, epochs: Optional[int] = None, onnx: Optional[bool] = None) -> Dict[str, object]:
        """Fine-tune, deploy, verify, time and export ``arch``; its finalists.csv row.

        ``epochs`` and ``onnx`` default to the space file's ``finalists.epochs`` and ``export.onnx``.
        """
        config, run, context = self.config, self.run, self.context
        epochs = config.finalists.epochs if epochs is None else epochs
        onnx = config.export.onnx if onnx is None else onnx
        work = run.finalist_dir(arch)
        model = self.starting_model(arch)
        accuracy_before = top1_accuracy(model, self.val, self.device)
        if epochs:
            fit(model, context.train_loader(), config.finalists, self.device,
                checkpoint=Checkpoint.in_dir(work, "finetune"), seed=config.seed, epochs=epochs,
                label=f"fine-tune {arch}")
        model.eval()
        accuracy_after = top1_accuracy(model, self.val, self.device)
        deployed = build_deploy_model(self.space, arch, context.num_classes, reparameterize_model(model).state_dict())
        deployed.to(self.device)
        images = next(iter(self.val))[0].to(self.device)
        with torch.no_grad():
            max_abs_diff = float((exportable(deployed, config)(images) - model(images)).abs().max())
        train_latency = measure(model, self.setup, deploy=False)
        deploy_latency = measure(deployed, self.setup)
        routing = routing_statistics(deployed, self.val, context.num_classes, self.device)
        write_json(work / "routing.json", routing)
        params = count_params(deployed)
        flops = count_flops(deployed, (3, config.data.image_size, config.data.image_size))
        facts = {
            "accuracy (one-shot, inherited weights)": f"{accuracy_before:.2f}%",
            f"accuracy (after {epochs} fine-tuning epochs)": f"{accuracy_after:.2f}%",
            "deploy latency": (f"{deploy_latency.latency_ms:.3f} ms ({self.setup.statistic}; median "
                               f"{deploy_latency.median_ms:.3f}, p90 {deploy_latency.p90_ms:.3f})"),
            "training-form latency": f"{train_latency.latency_ms:.3f} ms",
            "latency setup": self.setup.describe(),
            "params": f"{params:,}", "FLOPs": f"{flops:,}",
            "deploy vs training form, max abs diff": f"{max_abs_diff:.2e}",
            "dataset": config.data.dataset,
        }
        plain = exportable(deployed, config) is not deployed
        name = "convnext (plain timm)" if plain else config.model.timm_name
        directory = export_model(run.exports / str(arch), deployed, config, context.classes, context.splits.mean,
                                 context.splits.std, model_card(arch, name, facts, plain, run.path.name,
                                                             deploy_latency.environment), onnx=onnx)
        run.record_files(*sorted(p for p in directory.iterdir() if p.is_file()))
        return {
            "arch": str(arch), "accuracy_oneshot": accuracy_before, "accuracy_finetuned": accuracy_after,
            "finetune_epochs": epochs, "latency_ms": deploy_latency.latency_ms,
            "latency_p90_ms": deploy_latency.p90_ms, "train_latency_ms": train_latency.latency_ms,
            "latency_noisy": deploy_latency.noisy, "params": params, "flops": flops,
            "max_abs_diff": max_abs_diff, "verified": max_abs_diff <= VERIFY_TOLERANCE,
            "plain_timm": plain, "export": str(directory.relative_to(run.path)),
        }


def run_finalists(context) -> pd.DataFrame:
    """The run's finalists phase: select, then finalize each not yet in finalists.csv."""
    run = context.run
    chosen = select_finalists(TrialLog(run.trials_csv).frame(), context.config)
    path = run.finalists_csv
    done = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["arch"])
    if chosen.empty:
        say("finalists: no feasible architecture on the front")
        return done
    finalizer = Finalizer(context)
    rows = done.to_dict("records")
    for arch_text in chosen["arch"]:
        if arch_text in set(done["arch"]):
            continue
        say(f"finalist {arch_text}")
        rows.append(finalizer.finalize(Arch.parse(arch_text)))
        frame = pd.DataFrame(rows)
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    run.record_files(path)
    return pd.DataFrame(rows)
