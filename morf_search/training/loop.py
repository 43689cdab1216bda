"""Training loop shared by the supernet, standalone trials and finalist fine-tuning.

timm's factories provide the optimizer, the warm-up + cosine schedule and label smoothing;
hard-routed MoRF layers add their load-balancing loss. After every epoch one state file
(weights, optimizer, RNG, history) is written atomically: it is the epoch's commit, so a run
killed at any point resumes from its last finished epoch. The safetensors weights that the
rest of a run reads are written from it afterwards, stamped with their epoch, and rewritten
on resume when a kill left them behind (or ahead of) the state.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader

from ..core.fileio import load_state, load_weights, save_state, save_weights
from ..core.progress import bar, say
from ..layer.morf_conv import total_balance_loss
from ..models.arch import Arch
from ..space.schema import FinalistsConfig, TrainingConfig
from .distributed import Replica, arch_digest
from .precision import Precision, resolve_precision

ArchSampler = Callable[[random.Random, int], Sequence[Arch]]  # (rng, epoch) -> the step's archs


@dataclass
class Checkpoint:
    """Where a training run keeps its resumable state (the commit) and the weights exported from it."""

    weights: Path
    state: Path

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> "Checkpoint":
        return cls(Path(directory) / f"{name}.safetensors", Path(directory) / f"{name}.state.pt")

    def exists(self) -> bool:
        return self.state.is_file()

    def commit(self, model: nn.Module, state: dict) -> None:
        """The state (with the weights) first, then the weights file: a kill between leaves a state to resume."""
        weights = model.state_dict()
        save_state(self.state, {**state, "model": weights})
        self.export(weights, state["epoch"])

    def export(self, weights: Dict[str, torch.Tensor], epoch: int) -> None:
        save_weights(self.weights, weights, metadata={"epoch": str(epoch)})

    def restore(self, model: nn.Module, device: torch.device, writer: bool = True) -> dict:
        """Load the committed weights into ``model``; the ``writer`` brings the weights file up to that epoch."""
        state = load_state(self.state)
        weights = state.pop("model", None) or load_weights(self.weights, device)  # an older state has no weights
        model.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=True)
        if writer and self.weights_epoch() != state["epoch"]:
            self.export(model.state_dict(), state["epoch"])
        return state

    def weights_epoch(self) -> Optional[int]:
        """The epoch the weights file was written for; None when it is missing or unreadable."""
        try:
            with safe_open(str(self.weights), "pt") as handle:
                return int((handle.metadata() or {}).get("epoch", -1))
        except (SafetensorError, OSError, ValueError):
            return None


def build_optimizer(model: nn.Module, config: TrainingConfig, updates_per_epoch: int, epochs: int):
    """timm's optimizer and a per-update schedule that spans exactly ``epochs``."""
    optimizer = create_optimizer_v2(model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    warmup_epochs = min(config.warmup_epochs, max(epochs - 1, 0))  # leave at least one epoch to decay
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=config.schedule, num_epochs=epochs, warmup_epochs=warmup_epochs,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    return optimizer, scheduler


def training_precision(config: TrainingConfig, device: torch.device) -> Precision:
    """The precision a ``supernet`` (also standalone trials and from-scratch baselines) or ``finalists`` trains in."""
    section = "finalists" if isinstance(config, FinalistsConfig) else "supernet"
    return resolve_precision(config.precision, device, f"{section}.precision")


def training_record(config: TrainingConfig, device: torch.device, workers: int = 1) -> dict:
    """What the manifest says of a phase's training: its processes, device and precision."""
    return {"workers": workers, "device": str(device), "precision": training_precision(config, device).name}


def fit(model: nn.Module, loader: DataLoader, config: TrainingConfig, device: torch.device, *,
        sampler: Optional[ArchSampler] = None, checkpoint: Optional[Checkpoint] = None, seed: int = 0,
        evaluate: Optional[Callable[[nn.Module], Dict[str, float]]] = None, label: str = "train",
        epochs: Optional[int] = None, distill: bool = False, replica: Replica = Replica()) -> List[dict]:
    """Train ``model`` for ``config.epochs`` (or ``epochs``) and return the per-epoch history.

    With a ``sampler`` (``sampler(rng, epoch)``), each step activates the archs it returns
    (``model.set_arch``) and accumulates their gradients before one optimizer step: one arch
    is uniform sampling, largest + smallest + random is the sandwich rule. With ``distill``
    the first arch of each step is the teacher (in-place distillation, as in BigNAS): it
    learns from the labels, the others from its soft predictions, which are detached, so no
    gradient reaches the teacher through them. ``evaluate`` adds metrics per epoch. An
    existing ``checkpoint`` is resumed; one for a finished run returns its history.
    Forward passes run under ``config.precision``'s autocast, fp16 with a grad scaler.
    A Ray Train ``replica`` trains its slice of each batch under DDP; rank 0 alone evaluates
    and commits the checkpoint, every epoch checks that all ranks trained the same archs, and
    every rank then reports the epoch (``Replica.report``).
    """
    epochs = config.epochs if epochs is None else epochs
    precision = training_precision(config, device)
    scaler = precision.scaler()
    optimizer, scheduler = build_optimizer(model, config, len(loader), epochs)
    criterion = LabelSmoothingCrossEntropy(config.label_smoothing) if config.label_smoothing else nn.CrossEntropyLoss()
    rng = random.Random(seed)
    history: List[dict] = []
    start = 0
    if checkpoint is not None and checkpoint.exists():
        state = checkpoint.restore(model, device, writer=replica.rank == 0)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state.get("scaler", {}))
        rng.setstate(_as_random_state(state["rng"]))
        torch.set_rng_state(state["torch_rng"])
        history, start = list(state["history"]), state["epoch"]
        if start < epochs:
            say(f"{label}: resuming after epoch {start}/{epochs}")
    model.to(device, memory_format=precision.memory_format)
    net, loader = replica.wrap(model), replica.shard(loader)
    for epoch in range(start, epochs):
        model.train()
        # Same data order and augmentation on resume: timm's transforms draw from Python's global
        # random module when the loader runs in this process.
        epoch_seed = seed * 1_000_003 + epoch
        loader.generator.manual_seed(epoch_seed)
        random.seed(epoch_seed)
        began, seen, loss_sum, steps, sampled = time.perf_counter(), 0, 0.0, 0, []
        batches = bar(loader, len(loader), f"{label} epoch {epoch + 1}/{epochs}")
        for step, (images, targets) in enumerate(batches):
            images = images.to(device, non_blocking=True, memory_format=precision.memory_format)
            targets = targets.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            archs = sampler(rng, epoch) if sampler else [None]
            sampled.append(archs)
            teacher: Optional[torch.Tensor] = None
            for arch in archs:
                if arch is not None:
                    model.set_arch(arch)
                with precision.autocast():
                    logits = net(images)
                    if teacher is None:
                        loss = criterion(logits, targets)
                        if distill:
                            teacher = logits.detach().float().softmax(-1)
                    else:
                        loss = soft_target_loss(logits, teacher)
                    balance = total_balance_loss(model)
                    if balance is not None and config.balance_loss_weight:
                        loss = loss + config.balance_loss_weight * balance
                scaler.scale(loss).backward()
                loss_sum += loss.item() / len(archs)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step_update(epoch * len(loader) + step + 1)
            seen += len(targets) * replica.world
            steps += 1
            if hasattr(batches, "set_postfix") and step % 10 == 0:  # a live bar on a terminal
                batches.set_postfix(loss=f"{loss_sum / steps:.3f}",
                                    img_s=f"{seen / (time.perf_counter() - began):.0f}", refresh=False)
        seconds = time.perf_counter() - began
        record = {"epoch": epoch + 1, "loss": replica.mean(loss_sum / max(steps, 1)),
                  "lr": optimizer.param_groups[0]["lr"], "seconds": seconds, "images_per_s": seen / seconds}
        if sampler:
            digests = replica.gather(arch_digest(sampled))
            if len(set(digests)) > 1:  # their gradients would have been averaged across different subnets
                raise RuntimeError(f"{label} epoch {epoch + 1}: ranks trained different archs ({digests})")
            record["arch_digest"] = digests[0]
        if replica.rank:
            history.append(record)
            replica.report(record)
            continue
        if evaluate is not None:
            record.update(evaluate(model))
        history.append(record)
        say(f"{label} epoch {epoch + 1}/{epochs}: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
            if k not in ("epoch", "routing_warning", "arch_digest") and v != ""))
        if checkpoint is not None:
            checkpoint.commit(model, {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                      "rng": rng.getstate(),
                                      "torch_rng": torch.get_rng_state(), "history": history, "epoch": epoch + 1})
        replica.report(record)  # after the commit: an epoch that Tune (ASHA) saw is one that a restart keeps
    return history


def soft_target_loss(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a teacher's class probabilities (KL divergence up to the teacher's entropy)."""
    return -(target_probs * logits.log_softmax(-1)).sum(-1).mean()


def _as_random_state(state):
    """``random.setstate`` wants tuples; the saved state may come back with lists."""
    version, internal, gauss = state
    return version, tuple(internal), gauss
