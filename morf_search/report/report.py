"""``morf-search report``: the run's figures and report.md, from whatever the run holds so far.

Works on a finished run, a partly finished one (sections say what is missing) and one with
failed trials. Hypervolumes use a stated reference point: accuracy 0 % and 1.1 x the
slowest evaluated latency, unless the caller fixes one (to compare runs).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pandas as pd

from ..core.fileio import read_csv, read_json, write_text
from ..finalists.finalize import FINALIST_COLUMNS
from ..rundir import PHASES, RunDir
from ..search.pareto import hypervolume_2d, hypervolume_curve, pareto_front
from ..search.trials import TrialLog, routing_warnings
from ..space.search_space import SearchSpace
from ..training.routing_stats import StageRouting
from .payoff import baseline_means, payoff_section
from .plots import latency_bar_note, plot_accuracy_latency, plot_routing, plot_search_progress, plot_training_curve

OBJECTIVES_2D = ("accuracy", "latency_ms")


def hypervolume_reference(frames: Sequence[pd.DataFrame]) -> Tuple[float, float]:
    """(accuracy 0 %, 1.1 x the slowest evaluated latency) over the given trial tables."""
    latencies = [f.loc[f["status"] == "ok", "latency_ms"].max() for f in frames if not f.empty]
    latencies = [v for v in latencies if pd.notna(v)]
    return 0.0, round(1.1 * max(latencies), 6) if latencies else 1.0


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()


def _table(frame: pd.DataFrame, columns: List[str], floatfmt: str = ".3g") -> str:
    present = [c for c in columns if c in frame]
    return frame[present].to_markdown(index=False, floatfmt=floatfmt) if not frame.empty else "_none yet_"


def run_title(run: RunDir, config, environment: Optional[dict]) -> str:
    hardware = f"{environment['cpu']}, {environment['threads']} threads" if environment else "hardware unknown"
    return f"{run.path.name}: {config.model.timm_name} on {config.data.dataset} ({hardware})"


def with_latency_range(finalists: pd.DataFrame, statistic: str) -> pd.DataFrame:
    """Finalists with their deploy p10 as ``latency_p10_ms``. Runs from before that column kept the p90 and
    ``latency_ms``, the statistic they ranked by: the p10 itself, or the median (then the p10 is unknown)."""
    if finalists.empty or "latency_p10_ms" in finalists or "latency_p90_ms" not in finalists:
        return finalists
    return finalists.assign(latency_p10_ms=finalists["latency_ms"] if statistic == "p10" else float("nan"))


def supernet_loss_label(config) -> str:
    """What the supernet's logged loss sums (``training.loop.fit``): per sampled arch, the task loss plus the
    weighted load-balance loss of hard-routed layers, averaged over the archs of a step."""
    supernet = config.supernet
    terms = [f"label-smoothed CE ({supernet.label_smoothing:g})" if supernet.label_smoothing else "CE"]
    if supernet.distillation:
        terms[0] += " or distillation"
    hard = any("hard" in stage.routing and stage.max_experts > 1 for stage in config.space.stages)
    if hard and supernet.balance_loss_weight:
        terms.append(f"+ {supernet.balance_loss_weight:g} x load balance")
    return "\n".join(["training loss:", *terms])


def write_report(run: RunDir) -> Path:
    config = run.load_space()
    manifest = run.manifest()
    environment = manifest.get("environment")
    trials = TrialLog(run.trials_csv).frame()
    references = _read(run.references_csv)
    finalists = read_csv(run.finalists_csv, FINALIST_COLUMNS)
    constraints = config.search.constraints
    front = pareto_front(trials, OBJECTIVES_2D, constraints) if not trials.empty else pd.DataFrame()
    title = run_title(run, config, environment)
    figures: List[Tuple[str, Path, List[str]]] = []

    if not trials.empty:
        oneshot_references = references[references["engine"] == "reference"] if "engine" in references else references
        ranged = with_latency_range(finalists, config.latency.statistic)
        stem = run.plots / "accuracy_latency"
        plot_accuracy_latency(trials, front, ranged, oneshot_references, baseline_means(references),
                              constraints.get("latency_ms"), title, stem)
        page, svg = (stem.with_suffix(suffix).relative_to(run.path) for suffix in (".html", ".svg"))
        figures.append(("Accuracy against latency", stem.with_suffix(".png"), [
            latency_bar_note(ranged), "", f"[Interactive version]({page}) (hover over a point for its arch, "
                                          f"accuracy, latency and params; opens offline) · [SVG]({svg})"]))
        reference = hypervolume_reference([trials])
        curve = hypervolume_curve(trials, OBJECTIVES_2D, reference, constraints)
        plot_search_progress({run.path.name: curve}, reference, title, run.plots / "search_progress")
        figures.append(("Search progress", run.plots / "search_progress.png", []))
    routing = {}
    for _, row in finalists.iterrows():
        stats_file = run.finalist_dir(row["arch"]) / "routing.json"
        if stats_file.is_file():
            stats = read_json(stats_file, List[StageRouting])
            if stats:
                routing[row["arch"]] = stats
    if routing:
        plot_routing(routing, classes=manifest.get("classes", []),
                     title=f"Expert usage on validation images — {title}", stem=run.plots / "routing")
        figures.append(("Routing of the finalists", run.plots / "routing.png", []))
    history = manifest["phases"].get("supernet", {}).get("history")
    if history:
        plot_training_curve(history, supernet_loss_label(config), f"Supernet training — {title}",
                            run.plots / "supernet_training")
        figures.append(("Supernet training", run.plots / "supernet_training.png", []))

    lines = [f"# Run `{run.path.name}`", "", f"{title}.", ""]
    lines += payoff_section(finalists, references)
    lines += _trust_section(manifest, trials, finalists)
    lines += _space_section(config)
    lines += ["## Phases", "", _phase_table(manifest), ""]
    for caption, path, notes in figures:
        lines += [f"## {caption}", "", f"![{caption}]({path.relative_to(run.path)})", ""]
        lines += notes + ([""] if notes else [])
    if not trials.empty:
        ok = trials[trials["status"] == "ok"]
        lines += ["## Trials", "",
                  f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
                  + f". Hypervolume of the front: {hypervolume_2d(front, OBJECTIVES_2D, reference):.4g} "
                    f"(reference: accuracy {reference[0]:g} %, latency {reference[1]:.4g} ms).", "",
                  "### Most accurate architectures", "",
                  _table(ok.nlargest(10, "accuracy"), ["arch", "accuracy", "latency_ms", "params", "flops"]), "",
                  "### Pareto front", "", _table(front, ["arch", "accuracy", "latency_ms", "params", "flops"]), ""]
        errors = trials[trials["status"] == "error"]
        if not errors.empty:
            lines += ["### Failed trials", "", _table(errors, ["trial_id", "arch", "message"]), ""]
    else:
        lines += ["## Trials", "", "_no trials yet_", ""]
    if not references.empty:
        lines += ["### References and baselines", "",
                  _table(references, ["arch", "role", "trained", "seed", "accuracy", "latency_ms", "params", "flops"]),
                  ""]
    lines += ["## Finalists", "", _table(finalists, [
        "arch", "accuracy_oneshot", "accuracy_finetuned", "accuracy_finetuned_std", "train_latency_ms", "latency_ms",
        "params", "flops", "max_abs_diff", "verified", "plain_timm"]), ""]
    for _, row in finalists.iterrows():
        lines += [f"- `{row['arch']}`: `{row['export']}/`", "",
                  "  ```python", "  import timm" + ("" if row.get("plain_timm") else ", morf_search"),
                  f"  model = timm.create_model('local-dir:{run.path / row['export']}', pretrained=True)",
                  "  ```", ""]
    lines += ["## Environment", "", "```", json.dumps({"versions": manifest.get("versions"),
                                                      "latency_hardware": environment,
                                                      "latency_setup": config.latency.model_dump()}, indent=2),
              "```", ""]
    return write_text(run.report_file, "\n".join(lines))


def _trust_section(manifest: dict, trials: pd.DataFrame, finalists: pd.DataFrame) -> List[str]:
    """How far the front can be trusted (the run's rank check) and which routed stages do not really route."""
    lines = ["## How far to trust this front", ""]
    check = manifest.get("rank_check")
    if check:
        (t0, t1), (r0, r1) = check["kendall_tau_90"], check["spearman_rho_90"]
        lines += [f"{check['archs']} archs spread over the front, trained standalone for {check['standalone_epochs']} "
                  f"epochs with the supernet's recipe, against their one-shot accuracy: Kendall tau "
                  f"{check['kendall_tau']:.2f} (90 % interval {t0:.2f}..{t1:.2f}), Spearman rho "
                  f"{check['spearman_rho']:.2f} ({r0:.2f}..{r1:.2f}), top-{check['top']} overlap "
                  f"{check['top_overlap']}/{check['top']}.", "", check["verdict"], ""]
    else:
        lines += ["No rank check was run (`search.rank_check: N` trains N archs of the front standalone and "
                  "measures how well one-shot accuracy ranked them).", ""]
    flagged = [(row["arch"], row["routing_warning"]) for _, row in finalists.iterrows()
               if isinstance(row.get("routing_warning"), str) and row["routing_warning"]]
    warned = routing_warnings(trials)
    if flagged or warned:
        lines += ["Routed stages that do not really route (a static layer in disguise: consider the static arch):", ""]
        lines += [f"- finalist `{arch}`: {warning}" for arch, warning in flagged]
        if warned:
            lines += [f"- {warned} of {len(trials)} trials have such a stage (`routing_warning` in trials.csv)"]
        lines += [""]
    return lines


def _space_section(config) -> List[str]:
    space = SearchSpace(config)
    search = config.search
    lines = ["## Space", "",
             f"- model `{config.model.timm_name}` {config.model.timm_kwargs() or ''}, data `{config.data.dataset}` "
             f"at {config.data.image_size} px",
             f"- {len(space):,} architectures; engine {search.engine}/{search.algorithm}, {search.num_trials} trials, "
             f"{search.evaluation} evaluation; objectives {', '.join(search.objectives)}; "
             f"constraints {search.constraints or 'none'}"]
    lines += [f"- {line}" for line in space.describe()]
    return lines + [""]


def _phase_table(manifest: dict) -> str:
    """Status and seconds per phase; the report phase, while it writes this report, says so."""
    rows = []
    for phase in PHASES:
        entry = manifest["phases"].get(phase, {})
        status, seconds = entry.get("status", "not started"), entry.get("seconds")
        if phase == "report" and status == "running":
            status, seconds = "this report", None
        rows.append({"phase": phase, "status": status, "seconds": "" if seconds is None else f"{seconds:.1f}"})
    return pd.DataFrame(rows).to_markdown(index=False, colalign=("left", "left", "right"), disable_numparse=True)
