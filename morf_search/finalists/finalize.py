"""Winners: fine-tune each finalist, re-parameterize, verify, re-measure and export it, then hold it
against the networks a user would otherwise have trained.

Each finalist is fine-tuned from the supernet's weights (resumable) once per seed of
``finalists.seeds``, re-parameterized, checked against its training form on validation
images, timed in both forms, and exported in timm's layout from its first seed (with ONNX
when ``export.onnx`` or ``--onnx`` asks for it). Baselines get the same compute: the
family's own default network (ConvNeXt: 7x7 everywhere; ResNet: 3x3 everywhere) and, for
each finalist, the single-receptive-field arch of the space nearest to it in latency. A
baseline inside the space is fine-tuned from the supernet exactly like a finalist; one
outside it is trained from scratch for the supernet's plus the fine-tuning epochs. All are
timed with the same latency setup. Every training runs on ``finalists.workers`` processes
(Ray Train when more than 1, in one Ray session for the whole phase).
"""
from __future__ import annotations

import random
import statistics
from functools import partial
from typing import Dict, List, Optional, Sequence

import pandas as pd
import torch
from timm.utils import reparameterize_model

from ..core.fileio import atomic_write, read_csv, write_json
from ..core.progress import say
from ..latency.cost import count_flops, count_params
from ..latency.measurement import measure
from ..models.arch import Arch
from ..search.trials import TrialLog
from ..training.distributed import Replica, session, train
from ..training.evaluate import recalibrate_batchnorm, top1_accuracy
from ..training.loop import Checkpoint, fit
from ..training.routing_stats import routing_statistics
from .export import ModelCard, build_deploy_model, check_equivalence, export_model, exportable
from .select import select_finalists

VERIFY_TOLERANCE = 1e-5
# the columns of finalists.csv its readers (resume, report) rely on, with their types
FINALIST_COLUMNS = {"arch": str, "accuracy_oneshot": float, "accuracy_finetuned": float, "latency_ms": float,
                    "train_latency_ms": float}


def mean_and_spread(values: Sequence[float]) -> tuple:
    """Mean and sample standard deviation (None for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


class Finalizer:
    """Fine-tunes, checks, times and exports archs of one run, sharing data and supernet across them."""

    def __init__(self, context, address: Optional[str] = None):
        self.context, self.address = context, address
        self.run, self.config, self.space = context.run, context.config, context.space
        self.device, self.setup = context.device, context.latency_setup
        self.val = context.val_batches

    @property
    def seeds(self) -> List[int]:
        return [self.config.seed + i for i in range(self.config.finalists.seeds)]

    def starting_model(self, arch: Arch) -> torch.nn.Module:
        return starting_model(self.context, arch)

    def fine_tune(self, arch: Arch, epochs: int, seed: int) -> torch.nn.Module:
        """``arch`` from the supernet's weights, fine-tuned with ``finalists``' recipe (resumable per seed)."""
        model = self.starting_model(arch)
        if epochs:
            name = "finetune" if seed == self.config.seed else f"finetune-seed{seed}"
            self._train(partial(_fine_tune, self.context, arch, epochs, seed), model, arch, name)
        return model.eval()

    def _train(self, job, model: torch.nn.Module, arch: Arch, name: str) -> None:
        """Run ``job`` (a training of ``arch`` committed to its ``name`` checkpoint) on ``finalists.workers``
        processes, then load what it committed into ``model``."""
        checkpoint = Checkpoint.in_dir(self.run.finalist_dir(arch), name)
        train(partial(job, checkpoint), self.config.finalists.workers, self.device, checkpoint.state,
              self.run.engine_dir, f"{name}-{arch}", self.address)
        checkpoint.restore(model, self.device)

    def deploy(self, arch: Arch, model: torch.nn.Module) -> torch.nn.Module:
        """The re-parameterized network, built by timm's factory, with ``model``'s weights."""
        deployed = build_deploy_model(self.space, arch, self.context.num_classes,
                                      reparameterize_model(model).state_dict())
        return deployed.to(self.device)

    def finalize(self, arch: Arch, epochs: Optional[int] = None, onnx: Optional[bool] = None) -> Dict[str, object]:
        """Fine-tune (per seed), deploy, verify, time and export ``arch``; its finalists.csv row.

        ``epochs`` and ``onnx`` default to the space file's ``finalists.epochs`` and ``export.onnx``.
        """
        config, run, context = self.config, self.run, self.context
        epochs = config.finalists.epochs if epochs is None else epochs
        onnx = config.export.onnx if onnx is None else onnx
        work = run.finalist_dir(arch)
        accuracy_before = top1_accuracy(self.starting_model(arch), self.val, self.device)
        models = [self.fine_tune(arch, epochs, seed) for seed in self.seeds]
        accuracies = [top1_accuracy(m, self.val, self.device) for m in models]
        accuracy_after, spread = mean_and_spread(accuracies)
        model = models[0]  # the export is the first seed's network, not the luckiest one
        deployed = self.deploy(arch, model)
        images = next(iter(self.val))[0].to(self.device)
        with torch.no_grad():  # what is exported must reproduce the trained network, or nothing is exported
            max_abs_diff = check_equivalence(arch, exportable(deployed, config)(images), model(images),
                                             VERIFY_TOLERANCE)
        train_latency = measure(model, self.setup, deploy=False)
        deploy_latency = measure(deployed, self.setup)
        routing = routing_statistics(deployed, self.val, context.num_classes, self.device)
        write_json(work / "routing.json", routing)
        warnings = "; ".join(entry["flag"] for entry in routing if entry["flag"])
        if warnings:
            say(f"finalist {arch}: {warnings}")
        params = count_params(deployed)
        flops = count_flops(deployed, (3, config.data.image_size, config.data.image_size))
        seeds_text = f", mean of seeds {', '.join(map(str, self.seeds))}" if len(self.seeds) > 1 else ""
        before = ("accuracy (one-shot, inherited weights)" if context.supernet is not None
                  else "accuracy before training (fresh weights)")
        facts = {
            before: f"{accuracy_before:.2f}%",
            f"accuracy (after {epochs} fine-tuning epochs{seeds_text})": f"{accuracy_after:.2f}%"
            + (f" ± {spread:.2f}" if spread is not None else ""),
            "accuracy of these weights": f"{accuracies[0]:.2f}%",
            "deploy latency": (f"{deploy_latency.latency_ms:.3f} ms ({self.setup.statistic}; median "
                               f"{deploy_latency.median_ms:.3f}, p90 {deploy_latency.p90_ms:.3f})"),
            "training-form latency": f"{train_latency.latency_ms:.3f} ms",
            "latency setup": self.setup.describe(),
            "params": f"{params:,}", "FLOPs": f"{flops:,}",
            "deploy vs training form, max abs diff": f"{max_abs_diff:.2e}",
            "dataset": config.data.dataset,
        }
        if warnings:
            facts["routing"] = warnings
        plain = exportable(deployed, config) is not deployed
        name = f"{config.model.family} (plain timm)" if plain else config.model.timm_name
        card = ModelCard(arch, name, run.path.name, config, facts, max_abs_diff, VERIFY_TOLERANCE, len(images),
                         context.supernet is not None, context.num_classes, deploy_latency.environment)
        directory = export_model(run.exports / str(arch), deployed, config, context.classes, context.splits.mean,
                                 context.splits.std, card, images, onnx=onnx)
        run.record_files(*sorted(p for p in directory.iterdir() if p.is_file()))
        return {
            "arch": str(arch), "accuracy_oneshot": accuracy_before, "accuracy_finetuned": accuracy_after,
            "accuracy_finetuned_std": spread, "accuracy_seeds": "/".join(f"{a:.2f}" for a in accuracies),
            "finetune_epochs": epochs, "latency_ms": deploy_latency.latency_ms, "latency_p10_ms": deploy_latency.p10_ms,
            "latency_p90_ms": deploy_latency.p90_ms, "train_latency_ms": train_latency.latency_ms,
            "latency_noisy": deploy_latency.noisy, "params": params, "flops": flops,
            "max_abs_diff": max_abs_diff, "verified": True,  # check_equivalence raised otherwise
            "plain_timm": plain, "routing_warning": warnings, "export": str(directory.relative_to(run.path)),
        }

    # -- baselines ----------------------------------------------------------------------------
    def baseline(self, arch: Arch, role: str) -> List[Dict[str, object]]:
        """``arch`` trained with a finalist's compute, once per seed: references.csv rows."""
        config, context = self.config, self.context
        supernet = context.supernet is not None
        # finalists of a standalone search start afresh too, so baselines then train exactly as they do
        like_a_finalist = arch in self.space or not supernet
        epochs = config.finalists.epochs if like_a_finalist else config.supernet.epochs + config.finalists.epochs
        if like_a_finalist:
            trained = (f"fine-tuned from the supernet, {epochs} epochs" if supernet
                       else f"trained from scratch like the finalists, {epochs} epochs")
        else:
            trained = f"trained from scratch, {epochs} epochs (supernet's plus fine-tuning epochs)"
        rows = []
        for seed in self.seeds:
            if like_a_finalist:
                model = self.fine_tune(arch, epochs, seed)
            else:
                model = self.space.build_model(arch, context.num_classes).to(self.device)
                self._train(partial(_from_scratch, context, arch, epochs, seed), model, arch, f"scratch-seed{seed}")
            accuracy = top1_accuracy(model.eval(), self.val, self.device)
            deployed = self.deploy(arch, model)
            size = config.data.image_size
            rows.append({"trial_id": f"baseline-{arch}-seed{seed}", "arch": str(arch), "role": role,
                         "trained": trained, "seed": seed, "accuracy": accuracy,
                         "latency_ms": measure(deployed, self.setup).latency_ms, "params": count_params(deployed),
                         "flops": count_flops(deployed, (3, size, size)), "status": "ok", "engine": "baseline"})
        return rows


def starting_model(context, arch: Arch) -> torch.nn.Module:
    """Inherited supernet weights (BatchNorm re-estimated where the family has it), or a fresh model."""
    supernet = context.supernet
    if supernet is None:
        return context.space.build_model(arch, context.num_classes).to(context.device)
    model = supernet.extract(arch)
    if context.calibration_batches:
        recalibrate_batchnorm(model, context.calibration_batches, context.device)
    return model


def _fine_tune(context, arch: Arch, epochs: int, seed: int, checkpoint: Checkpoint, replica: Replica) -> List[dict]:
    """One replica's fine-tuning of ``arch`` with ``finalists``' recipe (picklable: Ray Train workers run it)."""
    torch.manual_seed(seed)  # a fresh model (no supernet) starts alike in every replica and every start
    model = starting_model(context, arch)
    return fit(model, context.train_loader(seed), context.config.finalists, context.device, checkpoint=checkpoint,
               seed=seed, epochs=epochs, label=f"fine-tune {arch} (seed {seed})", replica=replica)


def _from_scratch(context, arch: Arch, epochs: int, seed: int, checkpoint: Checkpoint, replica: Replica) -> List[dict]:
    """One replica's from-scratch baseline training with the supernet's recipe."""
    torch.manual_seed(seed)
    model = context.space.build_model(arch, context.num_classes).to(context.device)
    return fit(model, context.train_loader(seed), context.config.supernet, context.device, checkpoint=checkpoint,
               seed=seed, epochs=epochs, label=f"baseline {arch} (seed {seed})", replica=replica)


def family_default(space) -> Arch:
    """The family's own network: its default kernel, static, in every stage."""
    return space.uniform(space.family.default_kernel)


def nearest_single_field(space, finalist: Arch, latency, limit: int = 64) -> Optional[Arch]:
    """The space's single-receptive-field arch (one static expert per stage: a plain network) nearest to a
    finalist in estimated latency, other than the finalist itself (at most ``limit`` candidates, seeded)."""
    candidates = [arch for arch in space.single_expert_archs() if arch != finalist]
    if len(candidates) > limit:
        candidates = random.Random(space.config.seed).sample(candidates, limit)
    target = latency(finalist)
    return min(candidates, key=lambda arch: abs(latency(arch) - target)) if candidates else None


def run_finalists(context, address: Optional[str] = None) -> pd.DataFrame:
    """The run's finalists phase: select, finalize each not yet in finalists.csv, then train the baselines
    (their trainings on Ray Train workers at ``address`` when ``finalists.workers`` is more than 1)."""
    run = context.run
    chosen = select_finalists(TrialLog(run.trials_csv).frame(), context.config)
    path = run.finalists_csv
    done = read_csv(path, FINALIST_COLUMNS)
    if chosen.empty:
        say("finalists: no feasible architecture on the front")
        return done
    with session(context.config.finalists.workers, run.engine_dir, address):
        return _finalize_all(context, Finalizer(context, address), chosen, done)


def _finalize_all(context, finalizer: Finalizer, chosen: pd.DataFrame, done: pd.DataFrame) -> pd.DataFrame:
    run, path = context.run, context.run.finalists_csv
    rows = done.to_dict("records")
    for index, arch_text in enumerate(chosen["arch"], 1):
        if arch_text in set(done["arch"]):
            continue
        say(f"finalist {index}/{len(chosen)}: {arch_text}")
        rows.append(finalizer.finalize(Arch.parse(arch_text)))
        frame = pd.DataFrame(rows)
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    finalists = pd.DataFrame(rows)
    finalists["baseline_arch"] = train_baselines(context, finalizer, finalists)
    atomic_write(path, lambda tmp: finalists.to_csv(tmp, index=False))
    run.record_files(path)
    return finalists


def train_baselines(context, finalizer: Finalizer, finalists: pd.DataFrame) -> List[Optional[str]]:
    """Train the family's default network and each finalist's nearest single-receptive-field arch into
    references.csv; returns each finalist's nearest one."""
    space = context.space
    wanted = {family_default(space): f"family default ({space.family.name}: "
                                     f"{space.family.default_kernel}x{space.family.default_kernel} everywhere)"}
    nearest = [nearest_single_field(space, Arch.parse(row["arch"]), context.arch_latency) for _, row in finalists.iterrows()]
    for arch in nearest:
        if arch is not None:
            wanted.setdefault(arch, "single receptive field nearest in latency")
    log = TrialLog(context.run.references_csv)
    recorded = log.frame()
    have = set(recorded["trial_id"]) if "trial_id" in recorded else set()
    for index, (arch, role) in enumerate(wanted.items(), 1):
        if all(f"baseline-{arch}-seed{seed}" in have for seed in finalizer.seeds):
            continue
        say(f"baseline {index}/{len(wanted)}: {arch}, {role}")
        for row in finalizer.baseline(arch, role):
            log.append(row)
    context.run.record_files(context.run.references_csv)
    return [str(arch) if arch is not None else None for arch in nearest]
