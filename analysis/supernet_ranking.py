"""Does one-shot accuracy rank archs like standalone training does, and which supernet training makes it so?

For a space file, picks ``--archs`` archs stratified over the space's latency range (by the
run's own latency estimator), trains each standalone with the supernet's own recipe (its
optimizer, schedule and epochs), then, for each supernet training option, trains a supernet
exactly as ``morf-search run`` does and scores the same archs one-shot. Prints, per option,
Kendall's tau and Spearman's rho with bootstrap 90 % intervals and the top-5 overlap.

Everything lives under ``--work`` (default ``runs/_ranking/<space name>``): one run directory
per option and ``standalone.json``; an interrupted invocation continues where it stopped.

    python analysis/supernet_ranking.py search_spaces/quickstart.yaml --archs 20
    python analysis/supernet_ranking.py search_spaces/quickstart.yaml --options uniform sandwich+distill
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import yaml

from morf_search.context import RunContext
from morf_search.core.fileio import write_json
from morf_search.phases import train_supernet_phase
from morf_search.rundir import RunDir
from morf_search.search.fidelity import rank_agreement, spread_by_latency
from morf_search.space.schema import dump_space, load_space, parse_space

# supernet-section overrides; "widest" spends the first half of the epochs on the widest expert sets
OPTIONS = {
    "uniform": {"sampling": "uniform", "distillation": False, "widest_first_epochs": 0},
    "sandwich": {"sampling": "sandwich", "distillation": False, "widest_first_epochs": 0},
    "uniform+distill": {"sampling": "uniform", "distillation": True, "widest_first_epochs": 0},
    "sandwich+distill": {"sampling": "sandwich", "distillation": True, "widest_first_epochs": 0},
    "sandwich+distill+widest": {"sampling": "sandwich", "distillation": True, "widest_first_epochs": "half"},
}


def option_run(work: Path, base: dict, name: str) -> RunContext:
    """The option's run directory (created once) with the space's supernet section overridden."""
    overrides = {k: (base["supernet"]["epochs"] // 2 if v == "half" else v) for k, v in OPTIONS[name].items()}
    data = {**base, "supernet": {**base["supernet"], **overrides}}
    path = work / name
    run = RunDir.open(path) if (path / "manifest.json").is_file() else RunDir.create(
        path, dump_space(parse_space(data, name)), data["seed"], f"supernet_ranking {name}")
    return RunContext(run)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("space", type=Path)
    parser.add_argument("--archs", type=int, default=20)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--pool", type=int, default=400, help="random archs the strata are drawn from")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    base = load_space(args.space).model_dump(mode="json")
    work = args.work or Path("runs/_ranking") / (base.get("name") or args.space.stem)
    work.mkdir(parents=True, exist_ok=True)

    reference = option_run(work, base, args.options[0])  # any option: the archs and standalone runs do not depend on it
    space, rng = reference.space, random.Random(args.seed)
    pool = [space.sample(rng) for _ in range(args.pool)]
    latency = reference.arch_latency
    archs = spread_by_latency(pool, latency, args.archs, rng)
    epochs = reference.config.supernet.epochs
    cache_file = work / "standalone.json"
    standalone = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    print(f"# {args.space}: {len(archs)} archs stratified over {latency(archs[0]):.3f}-{latency(archs[-1]):.3f} ms; "
          f"standalone: {epochs} epochs with the supernet's recipe", flush=True)
    for arch in archs:
        key = f"{arch}@{epochs}"
        if key not in standalone:
            standalone[key] = reference.runner.standalone(arch, epochs=epochs).metrics["accuracy"]
            write_json(cache_file, standalone)
        print(f"  {str(arch):<44} {latency(arch):7.3f} ms  standalone {standalone[key]:6.2f} %", flush=True)

    results = {}
    for name in args.options:
        context = option_run(work, base, name)
        started = time.perf_counter()
        if not context.run.phase_done("supernet"):
            train_supernet_phase(context)
            context.run.set_phase("supernet", "done", seconds=time.perf_counter() - started)
        seconds = context.run.manifest()["phases"]["supernet"].get("seconds", 0.0)
        oneshot = [context.evaluator.accuracy(arch) for arch in archs]
        agreement = rank_agreement(oneshot, [standalone[f"{a}@{epochs}"] for a in archs])
        results[name] = {**agreement.as_dict(), "supernet_seconds": seconds,
                         "supernet": {k: context.config.supernet.model_dump()[k] for k in OPTIONS[name]},
                         "oneshot": dict(zip(map(str, archs), oneshot))}
        print(f"{name:<26} {agreement.describe()}; one-shot {min(oneshot):.1f}-{max(oneshot):.1f} %, "
              f"supernet {seconds:.0f} s", flush=True)
    write_json(work / "ranking.json", {"space": str(args.space), "epochs": epochs, "archs": [str(a) for a in archs],
                                       "standalone": {str(a): standalone[f"{a}@{epochs}"] for a in archs},
                                       "options": results})
    print(yaml.safe_dump({n: round(r["kendall_tau"], 3) for n, r in results.items()}, sort_keys=False), end="")


if __name__ == "__main__":
    main()
