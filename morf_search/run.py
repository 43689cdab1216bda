"""``morf-search run``: supernet, search, Pareto front (then finalists and report), resumable.

Each phase records its status and timing in the manifest and is skipped on ``--resume``
once done. Supernet training resumes from its last finished epoch and the search from the
engine's own state, so a stopped or killed run loses at most the epoch or trials in flight.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .config import ALGORITHMS, SpaceFile, dump_space, load_space, parse_space
from .data import load_splits, make_loader
from .device import resolve_device
from .engines import get_engine
from .errors import UserError
from .evaluate import cache_batches, top1_accuracy
from .finalists import run_finalists
from .fileio import atomic_write
from .pareto import pareto_front
from .latency import LatencySetup, environment, thread_count
from .progress import say
from .rundir import RunDir
from .report import references_csv, write_report
from .search import runner_for, warm_latency_table
from .space import SearchSpace
from .supernet import SuperNet
from .train import Checkpoint, fit
from .trials import TrialLog, make_row


def _with_overrides(space: SpaceFile, engine: Optional[str], trials: Optional[int], seed: Optional[int]) -> SpaceFile:
    data = space.model_dump(mode="json")
    if engine:
        data["search"]["engine"] = engine
        if data["search"]["algorithm"] not in ALGORITHMS[engine]:
            data["search"]["algorithm"] = "random"  # the space's algorithm belongs to the other engine
    if trials:
        data["search"]["num_trials"] = trials
    if seed is not None:
        data["seed"] = seed
    return parse_space(data, "command line")


def train_supernet_phase(run: RunDir, config: SpaceFile, space: SearchSpace) -> None:
    device = resolve_device(config.device)
    splits = load_splits(config.data)
    num_classes = config.model.num_classes or splits.num_classes
    torch.manual_seed(config.seed)
    supernet = SuperNet(space, num_classes, device)
    data = config.data
    loader = make_loader(splits.train, data.batch_size, data.workers, shuffle=True, seed=config.seed, drop_last=True)
    val = cache_batches(make_loader(splits.val, data.batch_size, data.workers, shuffle=False,
                                    limit=config.search.eval_images))
    probe = space.largest()

    def evaluate(model):  # the largest arch's accuracy traces the supernet's training curve
        supernet.activate(probe)
        return {"val_accuracy_largest": top1_accuracy(model, val, device)}

    history = fit(supernet.model, loader, config.supernet, device,
                  sampler=lambda rng: supernet.sample(rng, config.supernet.sampling),
                  checkpoint=Checkpoint.in_dir(run.path, "supernet"), seed=config.seed, evaluate=evaluate,
                  label="supernet")
    run.set_phase("supernet", "running", history=history)


def _phase(run: RunDir, name: str, action) -> None:
    if run.phase_done(name):
        say(f"{name}: done earlier, skipped")
        return
    started = time.perf_counter()
    previous = run.manifest()["phases"].get(name, {}).get("seconds", 0.0)
    run.set_phase(name, "running")
    try:
        action()
    except KeyboardInterrupt:
        run.set_phase(name, "stopped", seconds=previous + time.perf_counter() - started)
        raise
    except Exception as err:
        run.set_phase(name, "failed", seconds=previous + time.perf_counter() - started, error=str(err)[:500])
        raise
    run.set_phase(name, "done", seconds=previous + time.perf_counter() - started)


def run_command(space_path: Path, name: Optional[str] = None, engine: Optional[str] = None,
                address: Optional[str] = None, resume: bool = False, trials: Optional[int] = None,
                seed: Optional[int] = None, runs_root: Path = Path("runs")) -> RunDir:
    if resume:
        if engine or trials or seed is not None:
            raise UserError("--resume continues a run exactly as it started; --engine, --trials and --seed "
                            "cannot change it (start a new run with --name instead)")
        run_name = name or load_space(space_path).name or Path(space_path).stem
        run = RunDir.open(runs_root / run_name)
        config = run.load_space()
    else:
        config = _with_overrides(load_space(space_path), engine, trials, seed)
        run_name = name or config.name or Path(space_path).stem
        snapshot = f"# resolved from {space_path} (defaults and command-line overrides applied)\n" + dump_space(config)
        run = RunDir.create(runs_root / run_name, snapshot, config.seed,
                            command=shlex.join(["morf-search", *sys.argv[1:]]))
        setup = LatencySetup.from_config(config.latency, config.data.image_size)
        with thread_count(setup.threads):
            run.update_manifest(environment=environment(setup.device))
    say(f"run {run.path}: {config.model.timm_name}, {config.search.engine}/{config.search.algorithm}, "
        f"{config.search.num_trials} trials, {config.search.evaluation} evaluation")
    space = SearchSpace(config)
    try:
        if config.search.evaluation == "oneshot":
            _phase(run, "supernet", lambda: train_supernet_phase(run, config, space))
            run.record_files(run.path / "supernet.safetensors")
        _phase(run, "search", lambda: _search_phase(run, config, space, resume, address))
        _phase(run, "pareto", lambda: _pareto_phase(run, config))
        if config.finalists.top_k or config.finalists.latency_budgets:
            _phase(run, "finalists", lambda: run_finalists(run))
        _phase(run, "report", lambda: say(f"report: {write_report(run)}"))
    except KeyboardInterrupt:
        say(f"stopped; continue with: morf-search run {space_path} --name {run.path.name} --resume")
        raise
    return run


def _search_phase(run: RunDir, config: SpaceFile, space: SearchSpace, resume: bool, address: Optional[str]) -> None:
    classes = load_splits(config.data).classes
    run.update_manifest(classes=classes)
    measured = warm_latency_table(config, space, config.model.num_classes or len(classes), cache_dir=None)
    if measured:
        say(f"latency table: measured {measured} new unit configurations")
    get_engine(config.search.engine).search(run, space, config.search.num_trials, config.search.seed or config.seed,
                                           resume, address)
    recorded = len(TrialLog(run.trials_csv))
    run.record_files(run.trials_csv)
    if recorded < config.search.num_trials:
        raise KeyboardInterrupt  # the engine stopped early (Ctrl-C reaches Ray first)
    evaluate_references(run, space)


def evaluate_references(run: RunDir, space: SearchSpace) -> None:
    """Score the space's single-receptive-field archs (k3 everywhere, k5 everywhere, ...) for comparison."""
    references = space.single_field_references()
    if not references:
        return
    runner = runner_for(run.path)
    log = TrialLog(references_csv(run))
    done = set(log.frame().get("arch", []))
    for arch in references:
        if str(arch) in done:
            continue
        started = time.perf_counter()
        if runner.config.search.evaluation == "standalone":
            metrics, status, message = runner.standalone(arch, report=lambda metrics: None)
        else:
            metrics, status, message = runner.oneshot(arch)
        log.append(make_row(f"reference-{arch}", arch, metrics, status, message, time.perf_counter() - started,
                            "reference"))
    say(f"references: {', '.join(str(a.stages[0]) + ' everywhere' for a in references)}")


def _pareto_phase(run: RunDir, config: SpaceFile) -> None:
    frame = TrialLog(run.trials_csv).frame()
    front = pareto_front(frame, config.search.objectives, config.search.constraints)
    atomic_write(run.pareto_csv, lambda tmp: front.to_csv(tmp, index=False))
    run.record_files(run.pareto_csv)
    say(f"pareto: {len(front)} architectures on the front of {len(frame)} trials")
