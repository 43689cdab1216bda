"""Winners: choose finalists on the Pareto front, fine-tune, re-parameterize, verify, re-measure, export.

Finalists are the constrained Pareto front thinned to ``top_k`` archs spread along
latency, or the most accurate arch under each of ``latency_budgets``. Each is fine-tuned
from the supernet's weights (resumable), re-parameterized, checked against its training
form on validation images, timed in both forms and exported in timm's layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import torch
from timm.utils import reparameterize_model

from .arch import Arch
from .config import SpaceFile
from .cost import count_flops, count_params
from .data import load_splits, make_loader
from .device import resolve_device
from .evaluate import OneShotEvaluator, cache_batches, recalibrate_batchnorm, top1_accuracy
from .export import build_deploy_model, export_model, exportable, model_card
from .fileio import atomic_write, load_weights, write_json
from .latency import LatencySetup, measure
from .pareto import feasible, pareto_front
from .progress import say
from .routing_stats import routing_statistics
from .rundir import RunDir
from .search import build_model
from .space import SearchSpace
from .supernet import SuperNet
from .train import Checkpoint, fit
from .trials import TrialLog

VERIFY_TOLERANCE = 1e-5


def select_finalists(frame: pd.DataFrame, config: SpaceFile) -> pd.DataFrame:
    """The finalists' trial rows, by latency budgets or spread along the Pareto front."""
    objectives = ("accuracy", "latency_ms")
    constraints = config.search.constraints
    chosen = config.finalists
    if chosen.latency_budgets:
        candidates = feasible(frame, constraints).dropna(subset=list(objectives))
        rows = [candidates[candidates["latency_ms"] <= budget].nlargest(1, "accuracy")
                for budget in sorted(chosen.latency_budgets)]
        picked = pd.concat([r for r in rows if not r.empty]) if any(not r.empty for r in rows) else candidates.iloc[:0]
        return picked.drop_duplicates("arch").reset_index(drop=True)
    front = pareto_front(frame, objectives, constraints)
    if len(front) <= chosen.top_k:
        return front
    targets = np.linspace(front["latency_ms"].min(), front["latency_ms"].max(), chosen.top_k)
    picked: List[int] = []
    for target in targets:  # the nearest not yet picked front member to each evenly spaced latency
        order = (front["latency_ms"] - target).abs().sort_values().index
        picked.append(next(i for i in order if i not in picked))
    return front.loc[sorted(picked)].reset_index(drop=True)


class Finalizer:
    """Fine-tunes and exports archs of one run, sharing data and supernet across them."""

    def __init__(self, run: RunDir):
        self.run = run
        self.config = config = run.load_space()
        self.space = SearchSpace(config)
        self.device = resolve_device(config.device)
        self.splits = load_splits(config.data)
        self.num_classes = config.model.num_classes or self.splits.num_classes
        self.setup = LatencySetup.from_config(config.latency, config.data.image_size)
        self.supernet: Optional[SuperNet] = None
        if (run.path / "supernet.safetensors").is_file():
            self.supernet = SuperNet(self.space, self.num_classes, self.device)
            self.supernet.model.load_state_dict(load_weights(run.path / "supernet.safetensors", self.device))
        self.evaluator = OneShotEvaluator(self.supernet, self.splits, config, self.device) if self.supernet else None
        data = config.data
        self.val = self.evaluator.val if self.evaluator else cache_batches(
            make_loader(self.splits.val, data.batch_size, data.workers, shuffle=False))

    def starting_model(self, arch: Arch) -> torch.nn.Module:
        """Inherited supernet weights (BatchNorm re-estimated for ResNet), or a fresh model without a supernet."""
        if self.supernet is None:
            return build_model(self.config, arch, self.num_classes).to(self.device)
        model = self.supernet.extract(arch)
        if self.evaluator.calibration:
            recalibrate_batchnorm(model, self.evaluator.calibration, self.device)
        return model

    def finalize(self, arch: Arch, epochs: Optional[int] = None, onnx: bool = False) -> Dict[str, object]:
        config, run = self.config, self.run
        epochs = config.finalists.epochs if epochs is None else epochs
        work = run.path / "finalists" / str(arch)
        model = self.starting_model(arch)
        accuracy_before = top1_accuracy(model, self.val, self.device)
        if epochs:
            data = config.data
            loader = make_loader(self.splits.train, data.batch_size, data.workers, shuffle=True, seed=config.seed,
                                 drop_last=True)
            fit(model, loader, config.finalists, self.device, checkpoint=Checkpoint.in_dir(work, "finetune"),
                seed=config.seed, epochs=epochs, label=f"fine-tune {arch}")
        model.eval()
        accuracy_after = top1_accuracy(model, self.val, self.device)
        deployed = build_deploy_model(config, arch, self.num_classes, reparameterize_model(model).state_dict())
        deployed.to(self.device)
        images = next(iter(self.val))[0].to(self.device)
        with torch.no_grad():
            max_abs_diff = float((exportable(deployed, config)(images) - model(images)).abs().max())
        train_latency = measure(model, self.setup, deploy=False)
        deploy_latency = measure(deployed, self.setup)
        routing = routing_statistics(deployed, self.val, self.num_classes, self.device)
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
        directory = export_model(run.exports / str(arch), deployed, config, self.splits.classes, self.splits.mean,
                                 self.splits.std, model_card(arch, name, facts, plain, run.path.name,
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


def finalists_csv(run: RunDir) -> Path:
    return run.path / "finalists.csv"


def run_finalists(run: RunDir) -> pd.DataFrame:
    """The run's finalists phase: select, then finalize each not yet in finalists.csv."""
    config = run.load_space()
    chosen = select_finalists(TrialLog(run.trials_csv).frame(), config)
    path = finalists_csv(run)
    done = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["arch"])
    if chosen.empty:
        say("finalists: no feasible architecture on the front")
        return done
    finalizer = Finalizer(run)
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
