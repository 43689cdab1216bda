"""The run's figures (matplotlib, PNG and SVG): Pareto front, routing, supernet training, search progress.

Each ``draw_*`` function takes plain tables or lists and returns one figure with labelled axes
and units, a legend and a title naming the run and hardware (tests read its text); each
``plot_*`` draws it and writes ``<stem>.png`` and ``<stem>.svg``. The accuracy-latency SVG
carries a hover text per point, and an HTML page shows it (``interactive.py``).
"""
from __future__ import annotations

import io
import math
import numbers
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..core.fileio import write_text  # noqa: E402
from ..layer.experts import Expert  # noqa: E402
from .interactive import hover_svg, write_front_page  # noqa: E402

FRONT_COLOR, FINALIST_COLOR, REFERENCE_COLOR, BASELINE_COLOR = "#1f5fa8", "#d62728", "#2ca02c", "#9467bd"
LATENCY_AXIS = "latency (ms): deploy form; hollow stars: training form"
ANGLE = re.compile(r"(-?\d+(?:\.\d+)?)\s*deg")


def _save(figure, stem: Path, tips: Optional[Dict[str, str]] = None) -> List[Path]:
    """PNG and SVG of ``figure``; the SVG's points linked to a key of ``tips`` get that hover text."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    figure.savefig(png, dpi=150, bbox_inches="tight")
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    write_text(svg, hover_svg(buffer.getvalue(), tips) if tips else buffer.getvalue())
    plt.close(figure)
    return [png, svg]


def _number(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, numbers.Real) and math.isfinite(value) else "?"


def _tip(kind: str, arch: str, accuracy, latency: str, params) -> str:
    return f"{arch}\n{kind}\naccuracy {_number(accuracy, '.2f')} %\nlatency {latency}\nparams {_number(params, ',.0f')}"


def _points(ax, tips: Dict[str, str], x, y, texts: Sequence[str], **style):
    """A scatter whose every point links to its hover text in ``tips`` (matplotlib's SVG ``urls``)."""
    urls = [f"#point-{len(tips) + i}" for i in range(len(texts))]
    tips.update(zip(urls, texts))
    return ax.scatter(x, y, urls=urls, **style)


def _rows_tips(frame: pd.DataFrame, kind: str, accuracy: str = "accuracy", latency: str = "latency_ms",
               arch: Optional[Sequence[str]] = None) -> List[str]:
    params = frame["params"] if "params" in frame else [None] * len(frame)
    return [_tip(kind, a, acc, f"{_number(lat, '.3f')} ms", p) for a, acc, lat, p in
            zip(frame["arch"] if arch is None else arch, frame[accuracy], frame[latency], params)]


def latency_range(finalists: pd.DataFrame) -> pd.DataFrame:
    """The finalists whose deploy latency has a recorded p10-p90 range (columns latency_p10_ms, latency_p90_ms)."""
    if finalists.empty or not {"latency_p10_ms", "latency_p90_ms"} <= set(finalists):
        return finalists.iloc[0:0]
    return finalists[finalists["latency_p10_ms"].notna() & finalists["latency_p90_ms"].notna()]


def latency_bar_note(finalists: pd.DataFrame) -> str:
    """The caption saying which points carry a latency bar and why the others do not."""
    ranged = latency_range(finalists)
    note = ("Horizontal bars: p10 to p90 of the timed rounds of a fine-tuned finalist's deploy latency; vertical "
            "bars: a baseline's accuracy spread (standard deviation) over seeds. Trials, references, baselines and "
            "the training-form points keep one latency statistic only, so they are drawn without a latency bar.")
    missing = [] if finalists.empty else [arch for arch in finalists["arch"] if arch not in set(ranged["arch"])]
    if missing:
        note += " No recorded latency spread, so no bar, for finalist " + ", ".join(f"`{a}`" for a in missing) + "."
    return note


def draw_accuracy_latency(trials: pd.DataFrame, front: pd.DataFrame, finalists: pd.DataFrame,
                          references: pd.DataFrame, baselines: pd.DataFrame, latency_bound: Optional[float],
                          title: str) -> Tuple[plt.Figure, Dict[str, str]]:
    """Every trial (faint), the Pareto front, finalists with their fine-tuning and deployment arrows and
    deploy latency p10-p90, single-receptive-field references (one-shot), the trained baselines (mean over
    seeds, with their spread) and the latency constraint; and the hover text of every point."""
    figure, ax = plt.subplots(figsize=(8, 5.5))
    tips: Dict[str, str] = {}
    evaluated = trials[trials["status"].isin(["ok", "stopped"])] if not trials.empty else trials
    if not evaluated.empty:
        _points(ax, tips, evaluated["latency_ms"], evaluated["accuracy"], _rows_tips(evaluated, "trial"), s=14,
                color="0.55", alpha=0.35, linewidths=0, label=f"trials ({len(evaluated)})")
    infeasible = trials[trials["status"] == "infeasible"] if not trials.empty else trials
    if not infeasible.empty:
        floor = evaluated["accuracy"].min() if not evaluated.empty else 0.0
        _points(ax, tips, infeasible["latency_ms"], np.full(len(infeasible), floor),
                _rows_tips(infeasible, "violates a constraint (accuracy not measured)"), marker="x", s=12,
                color="0.7", label=f"violates a constraint ({len(infeasible)})")
    if not front.empty:
        ordered = front.sort_values("latency_ms")
        ax.plot(ordered["latency_ms"], ordered["accuracy"], "-", color=FRONT_COLOR, drawstyle="steps-post")
        _points(ax, tips, ordered["latency_ms"], ordered["accuracy"], _rows_tips(ordered, "Pareto front"), s=18,
                color=FRONT_COLOR, zorder=3, label=f"Pareto front ({len(front)})")
    if not references.empty:
        _points(ax, tips, references["latency_ms"], references["accuracy"],
                _rows_tips(references, "single receptive field, one-shot"), marker="D", s=40, color=REFERENCE_COLOR,
                zorder=4, label="single receptive field")
        for _, row in references.iterrows():
            ax.annotate(row["arch"].split("_")[0].replace("-static", " everywhere"),
                        (row["latency_ms"], row["accuracy"]), textcoords="offset points", xytext=(5, -10),
                        fontsize=8, color=REFERENCE_COLOR)
    if not baselines.empty:
        ax.errorbar(baselines["latency_ms"], baselines["accuracy"], yerr=baselines["accuracy_std"].fillna(0),
                    fmt="none", ecolor=BASELINE_COLOR, capsize=3, zorder=5)
        texts = [f"{tip}\n{row['role']}, {int(row['seeds'])} seed(s)" for tip, (_, row) in
                 zip(_rows_tips(baselines, "baseline, trained", arch=baselines.index), baselines.iterrows())]
        _points(ax, tips, baselines["latency_ms"], baselines["accuracy"], texts, marker="s", s=45,
                color=BASELINE_COLOR, zorder=5, label="baseline, trained (bar: accuracy std over seeds)")
        for _, row in baselines.iterrows():
            ax.annotate(row["role"].split(" (")[0], (row["latency_ms"], row["accuracy"]), textcoords="offset points",
                        xytext=(6, 4), fontsize=7, color=BASELINE_COLOR)
    if not finalists.empty:
        _draw_finalists(ax, tips, finalists)
    if latency_bound is not None:
        ax.axvline(latency_bound, color="0.3", linestyle="--", linewidth=1, label=f"latency ≤ {latency_bound:g} ms")
    _label_accuracy_latency(ax, title, LATENCY_AXIS)
    return figure, tips


def _draw_finalists(ax, tips: Dict[str, str], finalists: pd.DataFrame) -> None:
    """One-shot (training form, hollow) and fine-tuned (deploy form, with its p10-p90 where known) stars."""
    for _, row in finalists.iterrows():
        ax.annotate("", xy=(row["latency_ms"], row["accuracy_finetuned"]),
                    xytext=(row["train_latency_ms"], row["accuracy_oneshot"]),
                    arrowprops=dict(arrowstyle="->", color=FINALIST_COLOR, lw=1.2, alpha=0.8))
    _points(ax, tips, finalists["train_latency_ms"], finalists["accuracy_oneshot"],
            _rows_tips(finalists, "finalist: one-shot, training form", "accuracy_oneshot", "train_latency_ms"),
            marker="*", s=90, facecolors="none", edgecolors=FINALIST_COLOR, zorder=5,
            label="finalist: one-shot, training form")
    ranged = latency_range(finalists)
    if not ranged.empty:
        below = (ranged["latency_ms"] - ranged["latency_p10_ms"]).clip(lower=0)
        above = (ranged["latency_p90_ms"] - ranged["latency_ms"]).clip(lower=0)
        ax.errorbar(ranged["latency_ms"], ranged["accuracy_finetuned"], xerr=[below, above], fmt="none",
                    ecolor=FINALIST_COLOR, capsize=3, zorder=5)
    texts = []
    for _, row in finalists.iterrows():
        spread = (f" (p10 {row['latency_p10_ms']:.3f}, p90 {row['latency_p90_ms']:.3f})"
                  if row["arch"] in set(ranged["arch"]) else " (no spread recorded)")
        texts.append(_tip("finalist: fine-tuned, deployed", row["arch"], row["accuracy_finetuned"],
                          f"{_number(row['latency_ms'], '.3f')} ms{spread}", row.get("params")))
    _points(ax, tips, finalists["latency_ms"], finalists["accuracy_finetuned"], texts, marker="*", s=160,
            color=FINALIST_COLOR, zorder=6, label="finalist: fine-tuned, deployed (bar: latency p10-p90)")


def _label_accuracy_latency(ax, title: str, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    # outside the axes, so it never covers a point
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def plot_accuracy_latency(trials: pd.DataFrame, front: pd.DataFrame, finalists: pd.DataFrame,
                          references: pd.DataFrame, baselines: pd.DataFrame, latency_bound: Optional[float],
                          title: str, stem: Path) -> List[Path]:
    """The accuracy-latency figure as PNG, SVG with hover text, and the HTML page around that SVG."""
    figure, tips = draw_accuracy_latency(trials, front, finalists, references, baselines, latency_bound, title)
    paths = _save(figure, stem, tips)
    return paths + [write_front_page(stem.with_suffix(".html"), paths[1], title, latency_bar_note(finalists), front)]


def expert_label(expert: str) -> str:
    """``'5'`` -> ``'5x5'``, ``'3d2'`` -> ``'3x3 dil 2'``: the same tick text on bars and heatmaps."""
    parsed = Expert.parse(expert)
    size = f"{parsed.kernel_size}x{parsed.kernel_size}"
    return size if parsed.dilation == 1 else f"{size} dil {parsed.dilation}"


def angle_order(classes: Sequence[str]) -> Optional[List[int]]:
    """Class indices by the angle their names carry (the embedded data's ``pairs at 45 deg``), or None when
    some name carries none: oriented classes then read as a sweep, not in the order they were generated."""
    angles = [ANGLE.search(name) for name in classes]
    if not classes or not all(angles):
        return None
    return sorted(range(len(classes)), key=lambda i: float(angles[i].group(1)))


def draw_routing(stats: Dict[str, List[dict]], classes: Sequence[str], title: str,
                 max_classes: int = 20) -> plt.Figure:
    """Per routed finalist and stage: expert usage overall, and per class when classes are few."""
    panels = [(arch, entry) for arch, entries in stats.items() for entry in entries]
    per_class = 0 < len(classes) <= max_classes
    by_angle = angle_order(classes)
    order = by_angle or list(range(len(classes)))
    figure, axes = plt.subplots(len(panels), 2 if per_class else 1, squeeze=False,
                                figsize=(11 if per_class else 6, 2.6 * len(panels)))
    for row, (arch, entry) in enumerate(panels):
        labels = [expert_label(e) for e in entry["experts"]]
        measure = "share of selections" if entry["routing"] == "hard" else "mean weight"
        ax = axes[row][0]
        ax.bar(range(len(labels)), entry["overall"], color=FRONT_COLOR)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylim(0, 1)
        ax.set_ylabel(measure)
        ax.set_title(f"{arch}\nstage {entry['stage']} ({entry['routing']})", fontsize=8)
        if per_class:
            ax = axes[row][1]
            usage = np.array(entry["per_class"])[order].T
            image = ax.imshow(usage, aspect="auto", cmap="viridis", vmin=0, vmax=1)
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xticks(range(len(order)), [classes[i] for i in order], rotation=60, fontsize=7, ha="right")
            ax.set_ylabel("expert (kernel)")
            ax.set_xlabel("class, by angle" if by_angle else "class")
            ax.set_title(f"{measure} per class", fontsize=8)
            figure.colorbar(image, ax=ax, fraction=0.03).set_label(measure, fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_routing(stats: Dict[str, List[dict]], classes: Sequence[str], title: str, stem: Path,
                 max_classes: int = 20) -> List[Path]:
    return _save(draw_routing(stats, classes, title, max_classes), stem)


def draw_training_curve(history: List[dict], loss_label: str, title: str) -> plt.Figure:
    """Supernet training loss (``loss_label`` says what it sums) and the largest arch's validation accuracy."""
    frame = pd.DataFrame(history)
    figure, loss_ax = plt.subplots(figsize=(7, 4))
    loss_ax.plot(frame["epoch"], frame["loss"], "-o", color=FRONT_COLOR, label="training loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel(loss_label, fontsize=8)
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
    return figure


def plot_training_curve(history: List[dict], loss_label: str, title: str, stem: Path) -> List[Path]:
    return _save(draw_training_curve(history, loss_label, title), stem)


def draw_search_progress(curves: Dict[str, List[float]], reference: Sequence[float], title: str) -> plt.Figure:
    """Hypervolume of the accuracy-latency front after each trial, one line per run, on an axis from 0."""
    figure, ax = plt.subplots(figsize=(7, 4))
    for label, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=label)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume (accuracy % x ms)")
    ax.set_title(f"{title}\nreference point: accuracy {reference[0]:g}%, latency {reference[1]:.3g} ms", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return figure


def plot_search_progress(curves: Dict[str, List[float]], reference: Sequence[float], title: str,
                         stem: Path) -> List[Path]:
    return _save(draw_search_progress(curves, reference, title), stem)


def plot_fronts(fronts: Dict[str, pd.DataFrame], title: str, stem: Path) -> List[Path]:
    """Several runs' Pareto fronts overlaid (labels carry their hypervolumes)."""
    figure, ax = plt.subplots(figsize=(8, 5.5))
    for label, front in fronts.items():
        ordered = front.sort_values("latency_ms")
        ax.plot(ordered["latency_ms"], ordered["accuracy"], "-o", markersize=4, drawstyle="steps-post", label=label)
    _label_accuracy_latency(ax, title, "latency (ms, deploy form)")
    return _save(figure, stem)
