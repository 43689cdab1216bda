"""The ``morf-search`` command line.

Errors in what the user gave (files, paths, arguments) are printed as one line each with
exit status 2; nothing the user can cause ends in a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .core.allocator import keep_freed_memory
from .core.errors import UserError
from .latency.backends import BACKENDS


def cmd_validate(args) -> int:
    from .space.schema import dump_space, load_space
    from .space.search_space import SearchSpace

    space_file = load_space(args.space)
    space = SearchSpace(space_file)
    print(f"# {args.space}: valid. Resolved configuration (defaults filled in):")
    print(dump_space(space_file), end="")
    print(f"# architectures in the space: {len(space):,}")
    for line in space.describe():
        print(f"#   {line}")
    return 0


def cmd_run(args) -> int:
    from .phases import DONE, run_command

    outcome = run_command(Path(args.space), name=args.name, engine=args.engine, address=args.address,
                          resume=args.resume, trials=args.trials, seed=args.seed, runs_root=Path(args.runs),
                          workers=args.workers)
    print(outcome.run.path)
    if outcome.status != DONE:
        print(f"interrupted; continue with: {outcome.resume_hint}", file=sys.stderr)
        return 130
    return 0


def cmd_export(args) -> int:
    from .context import RunContext
    from .finalists.finalize import Finalizer
    from .finalists.select import select_finalists
    from .models.arch import Arch
    from .search.trials import TrialLog

    context = RunContext.open(Path(args.run_dir))
    run = context.run
    with run.owned():
        run.verify_finished()
        if args.arch:
            archs = [Arch.parse(args.arch)]
        else:
            archs = [Arch.parse(a) for a in select_finalists(TrialLog(run.trials_csv).frame(), context.config)["arch"]]
        finalizer = Finalizer(context)
        for arch in archs:
            if arch not in context.space:
                raise UserError(f"--arch {arch}: not in the run's search space")
            row = finalizer.finalize(arch, epochs=args.epochs, onnx=args.onnx or None)
            print(run.path / row["export"])
    return 0


def cmd_bench(args) -> int:
    import json

    from .bench import bench, format_table

    result = bench(args.model, arch=args.arch, run_dir=args.run, batch_size=args.batch_size,
                   image_size=args.image_size, threads=args.threads, device=args.device,
                   channels_last=args.channels_last, dtype=args.dtype, rounds=args.rounds, backend=args.backend)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def cmd_report(args) -> int:
    from .report.report import write_report
    from .rundir import RunDir

    run = RunDir.open(Path(args.run_dir))
    with run.owned():
        run.verify_finished()
        print(write_report(run))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="morf-search",
        description="Neural architecture search over Mixture-of-Receptive-Fields (MoRF) ConvNets.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a space file and show the space it defines")
    validate.add_argument("space", help="space file (YAML)")
    validate.set_defaults(handler=cmd_validate)

    run = commands.add_parser(
        "run", help="train the supernet, search, and build the Pareto front (and finalists, report)",
        description="Run a search end to end into runs/NAME; --resume continues a stopped or killed run.")
    run.add_argument("space", help="space file (YAML)")
    run.add_argument("--name", help="run name (default: the space's name, else the file name)")
    run.add_argument("--engine", choices=["ray", "nni"], help="override the space's search engine")
    run.add_argument("--address", help="join an existing Ray cluster: auto, host:port or ray://host:port")
    run.add_argument("--resume", action="store_true", help="continue an existing run where it stopped")
    run.add_argument("--trials", type=int, help="override the number of trials")
    run.add_argument("--seed", type=int, help="override the seed")
    run.add_argument("--workers", type=int, help="supernet training processes (Ray Train) for this start; "
                     "also with --resume, which continues from the last epoch whatever the count was")
    run.add_argument("--runs", default="runs", help="directory holding runs (default: runs)")
    run.set_defaults(handler=cmd_run)

    export = commands.add_parser(
        "export", help="fine-tune, re-parameterize, verify and export archs of a run as timm models",
        description="Without --arch: the run's finalists. With --arch: any candidate of the run's space.")
    export.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")
    export.add_argument("--arch", help="arch string to export (default: the finalists)")
    export.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the space's finalists.epochs)")
    export.add_argument("--onnx", action="store_true",
                        help="also write model.onnx of the deploy form (default: the space's export.onnx)")
    export.set_defaults(handler=cmd_export)

    bench = commands.add_parser(
        "bench", help="latency, params and FLOPs of a model's training and deploy forms",
        description="MODEL: a timm name (MoRF names take --arch), an export directory, or an arch string with --run.")
    bench.add_argument("model")
    bench.add_argument("--arch", help="arch string for a MoRF timm model")
    bench.add_argument("--run", help="run directory whose base model an arch string uses")
    bench.add_argument("--batch-size", type=int, default=1)
    bench.add_argument("--image-size", type=int, help="default: the model's input size")
    bench.add_argument("--threads", type=int, help="default: torch's current thread count")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--channels-last", action="store_true")
    bench.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    bench.add_argument("--rounds", type=int, help="timed rounds (default: the latency harness's)")
    bench.add_argument("--backend", choices=sorted(BACKENDS), default="torch", help="what runs the network")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.set_defaults(handler=cmd_bench)

    report = commands.add_parser("report", help="write a run's plots and report.md (also done at the end of run)")
    report.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except UserError as err:
        for line in err.lines:
            print(f"error: {line}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m morf_search.cli, as well as python -m morf_search
    raise SystemExit(main())
