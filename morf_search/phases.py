"""``morf-search run``: supernet, search, Pareto front, finalists and report, resumable.

Each phase records its status and timing in the manifest and is skipped on ``--resume``
once done. Supernet training resumes from its last finished epoch and the search from the
engine's own state, so a stopped or killed run loses at most the epoch or trials in flight.
A phase says how it ended; one that stopped early (the engine was interrupted) ends the run
as ``stopped``, to be continued with ``--resume``.
"""
from __future__ import annotations

import random
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

from .context import RunContext
from .core.errors import UserError
from .core.fileio import atomic_write
from .core.progress import say
from .finalists.finalize import run_finalists
from .latency.backends import get_backend
from .latency.estimator import latency_setup, warm_latency_table
from .latency.harness import environment, thread_count
from .models.arch import Arch
from .report.report import write_report
from .rundir import RunDir, check_run_name
from .search.engines import get_engine
from .search.fidelity import rank_agreement, spread_by_latency, verdict
from .search.pareto import pareto_front
from .search.trials import TrialLog, make_row, routing_fields, routing_warnings
from .space.schema import (ALGORITHMS, CUSTOM_DATASET, SpaceFile, check_dataset_classes, dump_space, load_space,
                           parse_space)
from .space.search_space import SearchSpace
from .training.data import NO_CUSTOM_DATA, CustomData, load_splits
from .training.distributed import Replica, train
from .training.evaluate import top1_accuracy
from .training.loop import Checkpoint, fit, training_record
from .training.routing_stats import RoutingRecorder

DONE, STOPPED = "done", "stopped"


@dataclass(frozen=True)
class RunOutcome:
    """A run directory and how the command left it: ``done`` or ``stopped`` (continue with ``--resume``)."""

    run: RunDir
    status: str
    resume_hint: str = ""


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


def train_supernet_phase(context: RunContext, workers: Optional[int] = None, address: Optional[str] = None) -> str:
    """Train the supernet on ``workers`` processes (default ``supernet.workers``; Ray Train when more than 1)."""
    config, run = context.config, context.run
    workers = workers or config.supernet.workers
    history = train(partial(_train_supernet, context), workers, context.device,
                    Checkpoint.in_dir(run.path, "supernet").state, run.engine_dir, "supernet", address)
    run.set_phase("supernet", "running", history=history, **training_record(config.supernet, context.device, workers))
    run.record_files(run.supernet_weights)
    return DONE


def _train_supernet(context: RunContext, replica: Replica) -> list:
    """One replica's supernet training (the whole of it in one process)."""
    config, run = context.config, context.run
    supernet = context.new_supernet()
    probe = context.space.largest()

    flagged = set()

    def evaluate(model):  # the largest arch traces the supernet's training curve and its routers
        supernet.activate(probe)
        with RoutingRecorder(model) as recorder:
            accuracy = top1_accuracy(model, context.val_batches, context.device, recorder)
        routing = recorder.summary()
        for flag in {entry["flag"] for entry in routing if entry["flag"]} - flagged:
            say(f"supernet routing of the largest arch: {flag}")
            flagged.add(flag)
        return {"val_accuracy_largest": accuracy, **routing_fields(routing)}

    return fit(supernet.model, context.train_loader(), config.supernet, context.device,
               sampler=supernet.sampler(config.supernet), distill=config.supernet.distillation,
               checkpoint=Checkpoint.in_dir(run.path, "supernet"), seed=config.seed, evaluate=evaluate,
               label="supernet", replica=replica)


def _phase(run: RunDir, name: str, action: Callable[[], str]) -> str:
    if run.phase_done(name):
        say(f"{name}: done earlier, skipped")
        return DONE
    started = time.perf_counter()
    previous = run.manifest()["phases"].get(name, {}).get("seconds", 0.0)
    run.set_phase(name, "running")
    try:
        status = action()
    except KeyboardInterrupt:
        run.set_phase(name, STOPPED, seconds=previous + time.perf_counter() - started)
        raise
    except Exception as err:
        run.set_phase(name, "failed", seconds=previous + time.perf_counter() - started, error=str(err)[:500])
        raise
    run.set_phase(name, status, seconds=previous + time.perf_counter() - started)
    return status


def run_command(space_path: Path, name: Optional[str] = None, engine: Optional[str] = None,
                address: Optional[str] = None, resume: bool = False, trials: Optional[int] = None,
                seed: Optional[int] = None, runs_root: Path = Path("runs"),
                workers: Optional[int] = None) -> RunOutcome:
    """``morf-search run``: start (or with ``resume`` continue) the run of ``space_path`` in ``runs_root/<name>``;
    ``workers`` overrides ``supernet.workers``."""
    given = name is not None
    config = None if resume and given else load_space(space_path)  # resume reads the run's own snapshot
    run_name = check_run_name(name) if given else check_run_name(config.name or Path(space_path).stem, "name")
    hint = shlex.join(["morf-search", "run", str(space_path), "--name", run_name, "--resume",
                       *(["--runs", str(runs_root)] if Path(runs_root) != Path("runs") else [])])
    return start_run(Path(runs_root) / run_name, None if resume else config, str(space_path), hint,
                     shlex.join(["morf-search", *sys.argv[1:]]), engine=engine, address=address, trials=trials,
                     seed=seed, workers=workers)


def start_run(path: Path, config: Optional[SpaceFile], source: str, hint: str, command: str, *,
              engine: Optional[str] = None, address: Optional[str] = None, trials: Optional[int] = None,
              seed: Optional[int] = None, workers: Optional[int] = None,
              data: Optional[CustomData] = None) -> RunOutcome:
    """Start the run of ``config`` (from ``source``) at ``path``, or continue the one there when ``config`` is None,
    owning it meanwhile; ``command`` is what started it, ``hint`` how its user continues it. The command line
    and ``morf_search.Search`` meet here."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers: {workers}; expected a positive number of training processes")
    resume = config is None
    if resume and (engine or trials or seed is not None):
        raise UserError("--resume continues a run exactly as it started; --engine, --trials and --seed "
                        "cannot change it (start a new run with --name instead)")
    if resume:
        run = RunDir.open(path)
    else:
        config = _with_overrides(config, engine, trials, seed)
        backend = _check_before_creating(config, source, data)
        run = RunDir(path)
    with run.owned():
        if resume:
            run.verify_finished()
            run.adopt_location()
            _check_same_data(run, data)
        else:
            run = _create_run(run.path, config, source, command, backend, data)
        return _run_phases(RunContext(run, data), resume, address, hint, workers)


def _check_before_creating(config: SpaceFile, source: str, data: Optional[CustomData]):
    """What can refuse a new run before its directory exists; returns the latency backend."""
    backend = get_backend(config.latency.backend)
    backend.environment()  # a backend that is not installed is refused before the run exists
    if (config.data.dataset == CUSTOM_DATASET) != (data is not None):
        raise UserError(NO_CUSTOM_DATA if data is None else
                        f"{source}: data= was given, so data.dataset must be {CUSTOM_DATASET!r} "
                        f"(it is {config.data.dataset!r})")
    if config.model.num_classes and config.data.known_classes() is None:  # open the dataset to know
        check_dataset_classes(config, load_splits(config.data, custom=data).num_classes, source)
    return backend


def _create_run(path: Path, config: SpaceFile, source: str, command: str, backend,
                data: Optional[CustomData]) -> RunDir:
    snapshot = f"# resolved from {source} (defaults and command-line overrides applied)\n" + dump_space(config)
    run = RunDir.create(path, snapshot, config.seed, command=command)
    setup = latency_setup(SearchSpace(config))
    with thread_count(setup.threads):
        run.update_manifest(environment={**environment(setup.device), **backend.environment()},
                            **({"custom_data": data.fingerprint()} if data is not None else {}))
    return run


def _check_same_data(run: RunDir, data: Optional[CustomData]) -> None:
    """A run on datasets given from Python continues only on the same ones (same classes and sizes)."""
    recorded = run.manifest().get("custom_data")
    if recorded is None and data is None:
        return
    if recorded is None:
        raise UserError(f"{run.path}: its space names its dataset ({run.load_space().data.dataset}); "
                        "continue it without data=")
    if data is None:
        raise UserError(f"{run.path}: it trains on datasets given from Python; continue it with "
                        "morf_search.Search.restore(path, data=CustomData(...)) holding the same data")
    if data.fingerprint() != recorded:
        raise UserError(f"{run.path}: data= differs from the datasets it started on (classes and sizes recorded "
                        f"in manifest.json: {recorded['classes'][:5]}..., {recorded['train']} train and "
                        f"{recorded['val']} val images)")


def _run_phases(context: RunContext, resume: bool, address: Optional[str], hint: str,
                workers: Optional[int]) -> RunOutcome:
    config, run = context.config, context.run
    say(f"run {run.path}: {config.model.timm_name}, {config.search.engine}/{config.search.algorithm}, "
        f"{config.search.num_trials} trials, {config.search.evaluation} evaluation")
    phases = [("search", lambda: _search_phase(context, resume, address)),
              ("pareto", lambda: _pareto_phase(context)),
              ("rank_check", lambda: _rank_check_phase(context, address)),
              ("finalists", lambda: _finalists_phase(context, address)),
              ("report", lambda: _report_phase(context))]
    if config.search.evaluation == "oneshot":
        phases.insert(0, ("supernet", lambda: train_supernet_phase(context, workers, address)))
    try:
        for phase, action in phases:
            if _phase(run, phase, action) == STOPPED:
                say(f"{phase}: stopped early; continue with: {hint}")
                return RunOutcome(run, STOPPED, hint)
    except KeyboardInterrupt:
        say(f"stopped; continue with: {hint}")
        raise
    return RunOutcome(run, DONE)


def _search_phase(context: RunContext, resume: bool, address: Optional[str]) -> str:
    config, run = context.config, context.run
    run.update_manifest(classes=context.classes)
    if config.search.evaluation == "standalone":  # trials train with the supernet's recipe
        run.set_phase("search", "running", **training_record(config.supernet, context.device,
                                                             config.search.standalone_workers))
    measured = warm_latency_table(context.space, context.num_classes)
    if measured:
        say(f"latency table: measured {measured} new unit configurations")
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGUSR1)}
    try:
        outcome = get_engine(config.search.engine).search(context, config.search.num_trials,
                                                          config.search.seed or config.seed, resume, address)
    finally:  # Ray Tune leaves its Ctrl-C handler installed after a search, and it only sets a flag no one reads
        for signum, handler in handlers.items():
            if signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)
    run.record_files(run.trials_csv)
    if not outcome.finished:
        return STOPPED
    trials = TrialLog(run.trials_csv).frame()
    warned = routing_warnings(trials)
    if warned:
        say(f"routing: {warned} of {len(trials)} trials have a routed stage that does not really route "
            "(routing_warning in trials.csv)")
    evaluate_references(context, address)
    return DONE


def evaluate_references(context: RunContext, address: Optional[str] = None) -> None:
    """Score the space's single-receptive-field archs (k3 everywhere, k5 everywhere, ...) for comparison."""
    references = context.space.single_field_references()
    if not references:
        return
    log = TrialLog(context.run.references_csv)
    done = set(log.frame().get("trial_id", []))
    for index, arch in enumerate(references, 1):
        if f"reference-{arch}" in done:
            continue
        say(f"reference {index}/{len(references)}: {arch}")
        started = time.perf_counter()
        result = context.runner.evaluate(arch, address=address)
        log.append({**make_row(f"reference-{arch}", arch, result.metrics, result.status, result.message,
                               time.perf_counter() - started, "reference"),
                    "role": "single receptive field everywhere", "trained": context.config.search.evaluation})
    say(f"references: {', '.join(str(a.stages[0]) + ' everywhere' for a in references)}")


def _pareto_phase(context: RunContext) -> str:
    config, run = context.config, context.run
    frame = TrialLog(run.trials_csv).frame()
    front = pareto_front(frame, config.search.objectives, config.search.constraints)
    atomic_write(run.pareto_csv, lambda tmp: front.to_csv(tmp, index=False))
    run.record_files(run.pareto_csv)
    say(f"pareto: {len(front)} architectures on the front of {len(frame)} trials")
    return DONE


def _rank_check_phase(context: RunContext, address: Optional[str]) -> str:
    """Train ``search.rank_check`` archs spread over the front standalone; how well did one-shot rank them?"""
    config, run = context.config, context.run
    count = config.search.rank_check
    if not count or config.search.evaluation != "oneshot":
        return DONE
    log = TrialLog(run.rank_check_csv, required=("trial_id", "arch"))  # its rows have no status
    done = log.frame()
    trained = {a: float(v) for a, v in zip(done["arch"], done["standalone_accuracy"])} if not done.empty else {}
    trials = TrialLog(run.trials_csv).frame()
    ok = trials[trials["status"] == "ok"].drop_duplicates("arch").set_index("arch")
    picked = spread_by_latency(list(ok.index), lambda arch: ok.loc[arch, "latency_ms"], count,
                               random.Random(config.seed))
    epochs = config.supernet.epochs
    for arch in picked:
        if arch not in trained:
            result = context.runner.standalone(Arch.parse(arch), epochs=epochs, address=address)
            if result.status != "ok":  # re-measured over a constraint: it has no standalone accuracy
                continue
            trained[arch] = result.metrics["accuracy"]
            log.append({"trial_id": arch, "arch": arch, "latency_ms": ok.loc[arch, "latency_ms"],
                        "oneshot_accuracy": ok.loc[arch, "accuracy"], "standalone_accuracy": trained[arch],
                        "standalone_epochs": epochs})
    picked = [arch for arch in picked if arch in trained]
    if len(picked) < 3:
        say(f"rank check: only {len(picked)} archs trained, too few to rank")
        return DONE
    agreement = rank_agreement([ok.loc[a, "accuracy"] for a in picked], [trained[a] for a in picked])
    message = verdict(agreement)
    run.update_manifest(rank_check={**agreement.as_dict(), "verdict": message, "standalone_epochs": epochs})
    say(f"rank check: {agreement.describe()}")
    say(f"rank check: {message}")
    return DONE


def _finalists_phase(context: RunContext, address: Optional[str]) -> str:
    finalists = context.config.finalists
    if finalists.top_k or finalists.latency_budgets:
        context.run.set_phase("finalists", "running", **training_record(finalists, context.device, finalists.workers))
        run_finalists(context, address)
    return DONE


def _report_phase(context: RunContext) -> str:
    say("report: drawing the plots, writing report.md")
    say(f"report: {write_report(context.run)}")
    return DONE
