"""What the report's figures say: axis labels, ticks, colour bar, legend placement, error bars (read from the
matplotlib figures, not their pixels)."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from morf_search.report.plots import (angle_order, draw_accuracy_latency, draw_routing, draw_search_progress,
                                      draw_training_curve, expert_label)
from morf_search.report.report import supernet_loss_label
from morf_search.space.schema import parse_space


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def accuracy_latency_figure():
    trials = pd.DataFrame({"arch": ["a", "b", "c"], "accuracy": [80.0, 85.0, 83.0], "latency_ms": [1.0, 2.0, 2.5],
                           "params": [10, 20, 30], "status": ["ok", "ok", "ok"]})
    finalists = pd.DataFrame({"arch": ["b", "a"], "accuracy_oneshot": [85.0, 80.0], "accuracy_finetuned": [86.0, 81.0],
                              "train_latency_ms": [2.6, 1.4], "latency_ms": [2.0, 1.0],
                              "latency_p10_ms": [1.9, np.nan], "latency_p90_ms": [2.7, np.nan], "params": [20, 10]})
    baselines = pd.DataFrame({"role": ["family default (x)"], "trained": ["scratch"], "accuracy": [84.0],
                              "accuracy_std": [0.5], "latency_ms": [2.2], "params": [25], "seeds": [2]},
                             index=["d"])
    return draw_accuracy_latency(trials, trials.iloc[:2], finalists, pd.DataFrame(), baselines, None, "run")


def test_accuracy_latency_axis_legend_and_latency_bars():
    figure, tips = accuracy_latency_figure()
    ax = figure.axes[0]
    assert "deploy form" in ax.get_xlabel() and "hollow stars: training form" in ax.get_xlabel()
    figure.canvas.draw()
    legend_box, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend_box.x0 >= axes_box.x1, "the legend sits beside the axes, over no point"
    horizontal = [c for c in ax.containers if isinstance(c, ErrorbarContainer) and c.has_xerr]
    assert len(horizontal) == 1, "one bar: the finalist with a recorded spread"
    (segment,) = horizontal[0].lines[2][0].get_segments()
    assert segment[:, 0].tolist() == pytest.approx([1.9, 2.7]) and segment[:, 1].tolist() == pytest.approx([86, 86])
    vertical = [c for c in ax.containers if isinstance(c, ErrorbarContainer) and c.has_yerr]
    assert vertical[0].lines[2][0].get_segments()[0][:, 1].tolist() == pytest.approx([83.5, 84.5])
    texts = list(tips.values())
    assert len(texts) == 3 + 2 + 1 + 2 + 2, "trials, front, baseline, finalists in two forms"
    assert "b\nfinalist: fine-tuned, deployed\naccuracy 86.00 %\nlatency 2.000 ms (p10 1.900, p90 2.700)" in texts[-2]
    assert "no spread recorded" in texts[-1] and "params 10" in texts[-1]


def test_routing_ticks_colour_bar_and_classes_by_angle():
    classes = ["pairs at 0 deg", "pairs at 166 deg", "pairs at 45 deg", "pairs at 90 deg"]
    per_class = [[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]]
    stats = {"k5.7-hard": [{"stage": 0, "routing": "hard", "experts": ["5", "7"], "overall": [0.25, 0.75],
                            "per_class": per_class}],
             "k3.3d2-soft": [{"stage": 1, "routing": "soft", "experts": ["3", "3d2"], "overall": [0.5, 0.5],
                              "per_class": per_class}]}
    figure = draw_routing(stats, classes, "run")
    bars, heatmap = figure.axes[0], figure.axes[1]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["5x5", "7x7"]
    assert [t.get_text() for t in heatmap.get_yticklabels()] == ["5x5", "7x7"], "the same names as the bars"
    assert [t.get_text() for t in heatmap.get_xticklabels()] == [classes[i] for i in (0, 2, 3, 1)]
    assert heatmap.get_xlabel() == "class, by angle"
    assert heatmap.get_images()[0].get_array()[1].tolist() == [0.9, 0.7, 0.6, 0.8]
    colour_bars = figure.axes[4:]  # after the four panels
    assert [ax.get_ylabel() for ax in colour_bars] == ["share of selections", "mean weight"]
    assert [t.get_text() for t in figure.axes[3].get_yticklabels()] == ["3x3", "3x3 dil 2"]


def test_classes_without_angles_keep_their_order():
    assert angle_order(["cat", "dog", "pairs at 5 deg"]) is None
    assert angle_order(["b at 90 deg", "a at 12.5 deg"]) == [1, 0]
    assert expert_label("9") == "9x9" and expert_label("5d3") == "5x5 dil 3"


def test_search_progress_starts_at_zero():
    figure = draw_search_progress({"run": [41.0, 50.0, 52.0]}, (0.0, 3.0), "run")
    assert figure.axes[0].get_ylim()[0] == 0


def test_supernet_loss_label_names_every_term():
    hard = parse_space({"space": {"kernels": [3, 5], "routing": ["static", "hard"]}})
    static = parse_space({"space": {"kernels": [3, 5], "routing": ["static"]},
                          "supernet": {"label_smoothing": 0, "distillation": True}})
    assert supernet_loss_label(hard) == "training loss:\nlabel-smoothed CE (0.1)\n+ 0.01 x load balance"
    assert supernet_loss_label(static) == "training loss:\nCE or distillation"
    figure = draw_training_curve([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}],
                                 supernet_loss_label(hard), "run")
    assert figure.axes[0].get_ylabel() == supernet_loss_label(hard)
