"""The run's figures (matplotlib, PNG and SVG): Pareto front, routing, supernet training, search progress.

Each function takes plain tables or lists, draws one figure with labelled axes and units,
a legend and a title naming the run and hardware, and writes ``<stem>.png`` and ``<stem>.svg``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

FORMATS = ("png", "svg")
FRONT_COLOR, FINALIST_COLOR, REFERENCE_COLOR, BASELINE_COLOR = "#1f5fa8", "#d62728", "#2ca02c", "#9467bd"


def _save(figure, stem: Path) -> List[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        figure.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(figure)
    return paths


def plot_accuracy_latency(trials: pd.DataFrame, front: pd.DataFrame, finalists: pd.DataFrame,
                          references: pd.DataFrame, baselines: pd.DataFrame, latency_bound: Optional[float],
                          title: str, stem: Path) -> List[Path]:
    """Every trial (faint), the Pareto front, finalists with their fine-tuning and deployment arrows,
    single-receptive-field references (one-shot), the trained baselines (mean over seeds, with their
    spread) and the latency constraint."""
    figure, ax = plt.subplots(figsize=(8, 5.5))
    evaluated = trials[trials["status"].isin(["ok", "stopped"])] if not trials.empty else trials
    if not evaluated.empty:
        ax.scatter(evaluated["latency_ms"], evaluated["accuracy"], s=14, color="0.55", alpha=0.35,
                   linewidths=0, label=f"trials ({len(evaluated)})",
                   rasterized=True)  # an SVG element per trial would take seconds to write at 10,000 trials
    infeasible = trials[trials["status"] == "infeasible"] if not trials.empty else trials
    if not infeasible.empty:
        ax.scatter(infeasible["latency_ms"], np.full(len(infeasible), evaluated["accuracy"].min()
                                                     if not evaluated.empty else 0.0),
                   marker="x", s=12, color="0.7", label=f"violates a constraint ({len(infeasible)})", rasterized=True)
    if not front.empty:
        ordered = front.sort_values("latency_ms")
        ax.plot(ordered["latency_ms"], ordered["accuracy"], "-o", color=FRONT_COLOR, markersize=4,
                drawstyle="steps-post", label=f"Pareto front ({len(front)})")
    if not references.empty:
        ax.scatter(references["latency_ms"], references["accuracy"], marker="D", s=40, color=REFERENCE_COLOR,
                   zorder=4, label="single receptive field")
        for _, row in references.iterrows():
            ax.annotate(row["arch"].split("_")[0].replace("-static", " everywhere"),
                        (row["latency_ms"], row["accuracy"]), textcoords="offset points", xytext=(5, -10),
                        fontsize=8, color=REFERENCE_COLOR)
    if not baselines.empty:
        ax.errorbar(baselines["latency_ms"], baselines["accuracy"], yerr=baselines["accuracy_std"].fillna(0),
                    fmt="s", color=BASELINE_COLOR, markersize=7, capsize=3, zorder=5, label="baseline, trained")
        for arch, row in baselines.iterrows():
            ax.annotate(row["role"].split(" (")[0], (row["latency_ms"], row["accuracy"]), textcoords="offset points",
                        xytext=(6, 4), fontsize=7, color=BASELINE_COLOR)
    if not finalists.empty:
        for _, row in finalists.iterrows():
            ax.annotate("", xy=(row["latency_ms"], row["accuracy_finetuned"]),
                        xytext=(row["train_latency_ms"], row["accuracy_oneshot"]),
                        arrowprops=dict(arrowstyle="->", color=FINALIST_COLOR, lw=1.2, alpha=0.8))
        ax.scatter(finalists["train_latency_ms"], finalists["accuracy_oneshot"], marker="*", s=90,
                   facecolors="none", edgecolors=FINALIST_COLOR, zorder=5,
                   label="finalist: one-shot, training form")
        ax.scatter(finalists["latency_ms"], finalists["accuracy_finetuned"], marker="*", s=160,
                   color=FINALIST_COLOR, zorder=5, label="finalist: fine-tuned, deployed")
    if latency_bound is not None:
        ax.axvline(latency_bound, color="0.3", linestyle="--", linewidth=1, label=f"latency ≤ {latency_bound:g} ms")
    return _finish_accuracy_latency(figure, ax, title, stem)


def _finish_accuracy_latency(figure, ax, title: str, stem: Path) -> List[Path]:
    ax.set_xlabel("latency (ms, deploy form)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(figure, stem)


def plot_routing(stats: Dict[str, List[dict]], classes: Sequence[str], title: str, stem: Path,
                 max_classes: int = 20) -> List[Path]:
    """Per routed finalist and stage: expert usage overall, and per class when classes are few."""
    panels = [(arch, entry) for arch, entries in stats.items() for entry in entries]
    per_class = 0 < len(classes) <= max_classes
    figure, axes = plt.subplots(len(panels), 2 if per_class else 1, squeeze=False,
                                figsize=(11 if per_class else 6, 2.6 * len(panels)))
    for row, (arch, entry) in enumerate(panels):
        experts = entry["experts"]
        measure = "share of selections" if entry["routing"] == "hard" else "mean weight"
        ax = axes[row][0]
        ax.bar(range(len(experts)), entry["overall"], color=FRONT_COLOR)
        ax.set_xticks(range(len(experts)), [f"{e}x{e}" if "d" not in e else e for e in experts])
        ax.set_ylim(0, 1)
        ax.set_ylabel(measure)
        ax.set_title(f"{arch}\nstage {entry['stage']} ({entry['routing']})", fontsize=8)
        if per_class:
            ax = axes[row][1]
            image = ax.imshow(np.array(entry["per_class"]).T, aspect="auto", cmap="viridis", vmin=0, vmax=1)
            ax.set_yticks(range(len(experts)), experts)
            ax.set_xticks(range(len(classes)), classes, rotation=60, fontsize=7, ha="right")
            ax.set_ylabel("expert (kernel)")
            ax.set_title(f"{measure} per class", fontsize=8)
            figure.colorbar(image, ax=ax, fraction=0.03)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, stem)


def plot_training_curve(history: List[dict], title: str, stem: Path) -> List[Path]:
    """Supernet training loss and the largest arch's validation accuracy per epoch."""
    frame = pd.DataFrame(history)
    figure, loss_ax = plt.subplots(figsize=(7, 4))
    loss_ax.plot(frame["epoch"], frame["loss"], "-o", color=FRONT_COLOR, label="training loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss (label-smoothed CE)")
    handles = loss_ax.get_legend_handles_labels()
    if "val_accuracy_largest" in frame:
        acc_ax = loss_ax.twinx()
        acc_ax.plot(frame["epoch"], frame["val_accuracy_largest"], "-s", color=FINALIST_COLOR,
                    label="val accuracy, largest arch")
        acc_ax.set_ylabel("top-1 accuracy (%)")
        extra = acc_ax.get_legend_handles_labels()
        handles = (handles[0] + extra[0], handles[1] + extra[1])
    loss_ax.legend(*handles, fontsize=8, loc="center right")
    loss_ax.grid(alpha=0.3)
    loss_ax.set_title(title, fontsize=10)
    return _save(figure, stem)


def plot_search_progress(curves: Dict[str, List[float]], reference: Sequence[float], title: str,
                         stem: Path) -> List[Path]:
    """Hypervolume of the accuracy-latency front after each trial, one line per run."""
    figure, ax = plt.subplots(figsize=(7, 4))
    for label, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=label)
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume (accuracy % x ms)")
    ax.set_title(f"{title}\nreference point: accuracy {reference[0]:g}%, latency {reference[1]:.3g} ms", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, stem)


def plot_fronts(fronts: Dict[str, pd.DataFrame], title: str, stem: Path) -> List[Path]:
    """Several runs' Pareto fronts overlaid (labels carry their hypervolumes)."""
    figure, ax = plt.subplots(figsize=(8, 5.5))
    for label, front in fronts.items():
        ordered = front.sort_values("latency_ms")
        ax.plot(ordered["latency_ms"], ordered["accuracy"], "-o", markersize=4, drawstyle="steps-post", label=label)
    return _finish_accuracy_latency(figure, ax, title, stem)
