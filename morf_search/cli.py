"""The ``morf-search`` command line.

Errors in what the user gave (files, paths, arguments) are printed as one line each with
exit status 2; nothing the user can cause ends in a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .core.allocator import keep_freed_memory
from .core.device import resolve_device
from .core.errors import UserError
from .latency.backends import BACKENDS
from .models.arch import Arch
from .rundir import RunError, check_run_name


class Parser(argparse.ArgumentParser):
    """argparse's parser, reporting a mistake in one line instead of after the whole usage."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def text(value: str) -> str:
    """A string argument that is not empty."""
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a non-empty value, got ''")
    return value


def whole_number(minimum: int):
    """An int argument of at least ``minimum``."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {number}")
        return number
    return parse


positive, non_negative = whole_number(1), whole_number(0)


def arch(value: str) -> Arch:
    """An arch string, e.g. k3.5-soft_k3-static_k3-static_k3-static."""
    try:
        return Arch.parse(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def device(value: str) -> str:
    """auto, cpu, cuda or cuda:N, present on this machine."""
    try:
        return str(resolve_device(text(value)))
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("device: ")) from None


def run_name(value: str) -> str:
    """A run's name: one folder under --runs."""
    try:
        return check_run_name(value, "")
    except RunError as err:
        raise argparse.ArgumentTypeError(str(err).strip()) from None


def runs_folder(value: str) -> Path:
    """The folder holding runs: created when absent, but not a file."""
    path = Path(text(value))
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file; expected the folder that holds runs")
    return path


def cmd_validate(args) -> int:
    from .space.schema import CUSTOM_DATASET, dump_space, load_space
    from .space.search_space import SearchSpace
    from .training.data import NO_CUSTOM_DATA

    space_file = load_space(args.space)
    if space_file.data.dataset == CUSTOM_DATASET:  # only Python can hand the datasets over
        raise UserError(f"{args.space}: {NO_CUSTOM_DATA}")
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
                          resume=args.resume, trials=args.trials, seed=args.seed, runs_root=args.runs,
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
    from .search.trials import TrialLog

    context = RunContext.open(Path(args.run_dir))
    run = context.run
    with run.owned():
        run.verify_finished()
        if args.arch:
            archs = [args.arch]
        else:
            archs = [Arch.parse(a) for a in select_finalists(TrialLog(run.trials_csv).frame(), context.config)["arch"]]
        finalizer = Finalizer(context)
        for chosen in archs:
            if chosen not in context.space:
                raise UserError(f"--arch {chosen}: not in the run's search space")
            row = finalizer.finalize(chosen, epochs=args.epochs, onnx=args.onnx or None)
            print(run.path / row["export"])
    return 0


def cmd_bench(args) -> int:
    import json

    from .bench import bench, format_table

    result = bench(args.model, arch=args.arch and str(args.arch), run_dir=args.run, batch_size=args.batch_size,
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


def cmd_list(args) -> int:
    from .runs_overview import format_runs, list_runs

    print(format_runs(list_runs(args.runs), args.runs))
    return 0


def cmd_show(args) -> int:
    from .runs_overview import describe_run

    print(describe_run(Path(args.run_dir)))
    return 0


def _command(commands, name: str, handler, summary: str, description: str, examples: str) -> Parser:
    """A subcommand whose --help ends with examples."""
    command = commands.add_parser(name, help=summary, description=description, epilog="examples:\n" + examples,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    command.set_defaults(handler=handler)
    return command


def build_parser() -> Parser:
    parser = Parser(
        prog="morf-search",
        description="Neural architecture search over Mixture-of-Receptive-Fields (MoRF) ConvNets.",
        epilog="example:\n  morf-search run search_spaces/quickstart.yaml && morf-search show runs/quickstart",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    validate = _command(commands, "validate", cmd_validate, "check a space file and show the space it defines",
                        "Check a space file; print it with every default filled in and the size of its space.",
                        "  morf-search validate search_spaces/quickstart.yaml")
    validate.add_argument("space", type=text, help="space file (YAML)")

    run = _command(commands, "run", cmd_run,
                   "train the supernet, search, and build the Pareto front (and finalists, report)",
                   "Run a search end to end into RUNS/NAME; --resume continues a stopped or killed run.",
                   "  morf-search run search_spaces/quickstart.yaml\n"
                   "  morf-search run search_spaces/quickstart.yaml --name quick20 --trials 20 --seed 1\n"
                   "  morf-search run search_spaces/quickstart.yaml --name quick20 --resume")
    run.add_argument("space", type=text, help="space file (YAML)")
    run.add_argument("--name", type=run_name, help="run name (default: the space's name, else the file name)")
    run.add_argument("--engine", choices=["ray", "nni"], help="override the space's search engine")
    run.add_argument("--address", type=text, help="join an existing Ray cluster: auto, host:port or ray://host:port")
    run.add_argument("--resume", action="store_true", help="continue an existing run where it stopped")
    run.add_argument("--trials", type=positive, help="override the number of trials (at least 1)")
    run.add_argument("--seed", type=non_negative, help="override the seed (0 or more)")
    run.add_argument("--workers", type=int, help="supernet training processes (Ray Train) for this start; "
                     "also with --resume, which continues from the last epoch whatever the count was")
    run.add_argument("--runs", type=runs_folder, default=Path("runs"),
                     help="folder holding runs, created if absent (default: runs)")

    export = _command(commands, "export", cmd_export,
                      "fine-tune, re-parameterize, verify and export archs of a run as timm models",
                      "Without --arch: the run's finalists. With --arch: any candidate of the run's space.",
                      "  morf-search export runs/quickstart\n"
                      "  morf-search export runs/quickstart --arch k3.5-soft_k5-static_k3-static_k3-static "
                      "--epochs 0 --onnx")
    export.add_argument("run_dir", type=text, help="a run directory, e.g. runs/quickstart")
    export.add_argument("--arch", type=arch, help="arch string to export (default: the finalists)")
    export.add_argument("--epochs", type=non_negative,
                        help="fine-tuning epochs, 0 to export the inherited weights as they are "
                             "(default: the space's finalists.epochs)")
    export.add_argument("--onnx", action="store_true",
                        help="also write model.onnx of the deploy form (default: the space's export.onnx)")

    bench = _command(commands, "bench", cmd_bench, "latency, params and FLOPs of a model's training and deploy forms",
                     "MODEL: a timm name (MoRF names take --arch), an export directory, or an arch string "
                     "with --run.",
                     "  morf-search bench morf_convnext_tiny --arch k3.5.7-soft_k3.5.7-soft_k3.5.7-soft_k3.5.7-soft\n"
                     "  morf-search bench runs/quickstart/exports/ARCH --backend onnxruntime --threads 2\n"
                     "  morf-search bench k3.5-soft_k5-static_k3-static_k3-static --run runs/quickstart --json")
    bench.add_argument("model", type=text, help="timm model name, export directory, or arch string (with --run)")
    bench.add_argument("--arch", type=arch, help="arch string for a MoRF timm model")
    bench.add_argument("--run", type=text, help="run directory whose base model an arch string uses")
    bench.add_argument("--batch-size", type=positive, default=1, help="images per call (default: 1)")
    bench.add_argument("--image-size", type=positive, help="input height and width (default: the model's)")
    bench.add_argument("--threads", type=positive, help="intra-op threads (default: torch's current count)")
    bench.add_argument("--device", type=device, default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")
    bench.add_argument("--channels-last", action="store_true", help="time in channels_last memory format")
    bench.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                       help="weights and input type (default: float32)")
    bench.add_argument("--rounds", type=positive, help="timed rounds (default: the latency harness's)")
    bench.add_argument("--backend", choices=sorted(BACKENDS), default="torch",
                       help="what runs the network (default: torch)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")

    report = _command(commands, "report", cmd_report,
                      "write a run's plots and report.md (also done at the end of run)",
                      "Write RUN_DIR/plots/ and RUN_DIR/report.md from the run's files.",
                      "  morf-search report runs/quickstart")
    report.add_argument("run_dir", type=text, help="a run directory, e.g. runs/quickstart")

    listing = _command(commands, "list", cmd_list, "the runs of a folder: status, best accuracy, front size",
                       "One line per run folder: status, trials, best accuracy, Pareto front size and finalists; "
                       "a folder that cannot be read is shown as damaged with the reason.",
                       "  morf-search list\n  morf-search list /data/morf-runs")
    listing.add_argument("runs", nargs="?", type=text, default="runs",
                         help="folder holding runs (default: runs)")

    show = _command(commands, "show", cmd_show, "one run: its phases, front, finalists and exports",
                    "Status and time of each phase, trial counts, the Pareto front, the finalists and where "
                    "their exports are.",
                    "  morf-search show runs/quickstart")
    show.add_argument("run_dir", type=text, help="a run directory, e.g. runs/quickstart")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a mistake argparse has reported: its status
        return done.code
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
    except BrokenPipeError:  # output piped into e.g. head, which stopped reading: as the Python docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # python -m morf_search.cli, as well as python -m morf_search
    raise SystemExit(main())
