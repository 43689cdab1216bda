"""How well does the per-layer lookup table predict measured latency?

For each space, samples random archs, predicts each deploy form's latency from the lookup
table (filled first exactly as a search fills it) and measures every arch whole, all side
by side in interleaved rounds; reports Spearman's rho and the median absolute percentage
error. Targets: rho >= 0.9, median error <= 10 %.

    python analysis/latency_predictor.py [--spaces search_spaces/quickstart.yaml ...] [--archs 30]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
from pathlib import Path

import yaml
from scipy.stats import spearmanr

from morf_search.latency import LatencySetup, LatencyTable, measure_side_by_side
from morf_search.latency.estimator import warm_latency_table
from morf_search.latency.harness import environment, thread_count
from morf_search.space.schema import parse_space
from morf_search.space.search_space import SearchSpace

DEFAULT_SPACES = ["search_spaces/quickstart.yaml", "search_spaces/convnext_imagenet.yaml"]


def evaluate_space(path: Path, count: int, seed: int, cache_dir: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["data"]["dataset"] = "embedded"  # only the model, space and latency setup matter here
    config = parse_space(data, str(path))
    space = SearchSpace(config)
    setup = LatencySetup.from_config(config.latency, config.data.image_size)
    warm_latency_table(space, 10, cache_dir)  # exactly what a search does before its trials
    table = LatencyTable(setup, cache_dir)
    rng = random.Random(seed)
    archs = [space.sample(rng) for _ in range(count)]
    deployed = {str(arch): space.build_model(arch, 10, deploy=True).eval() for arch in archs}
    predicted = [table.predict(model) for model in deployed.values()]
    # The reference: every arch measured whole, all side by side so drift does not reorder
    # them, in two sessions; how well the sessions agree is the most any predictor can reach.
    # (no retries: a second session is the repeat, and noisy rounds are counted below)
    sessions = [measure_side_by_side(deployed, dataclasses.replace(setup, retries=0)) for _ in range(2)]
    measured = [statistics.fmean(session[name].latency_ms for session in sessions) for name in deployed]
    retest_rho = spearmanr(*[[session[name].latency_ms for name in deployed] for session in sessions]).statistic
    noisy = sum(result.noisy for session in sessions for result in session.values())
    errors = [abs(p - m) / m * 100 for p, m in zip(predicted, measured)]
    rho = spearmanr(predicted, measured).statistic
    return {"space": str(path), "archs": len(deployed), "setup": setup.describe(), "spearman_rho": rho,
            "retest_rho": retest_rho, "median_abs_pct_error": statistics.median(errors),
            "max_abs_pct_error": max(errors), "measured_range_ms": (min(measured), max(measured)),
            "units_in_table": len(table.entries), "noisy_measurements": noisy,
            "per_arch": [{"arch": name, "predicted_ms": p,
                          "measured_ms": [session[name].latency_ms for session in sessions]}
                         for name, p in zip(deployed, predicted)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spaces", nargs="+", type=Path, default=[Path(p) for p in DEFAULT_SPACES])
    parser.add_argument("--archs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fresh-table", action="store_true", help="build the table in a temporary directory")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/latency_predictor.json"))
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="lut-")) if args.fresh_table else None
    with thread_count(args.threads):
        env = environment()
        print(f"# {env['cpu']}, torch {env['torch']}, {env['threads']} threads, allocator: {env['allocator']}")
        print("# latency: the space's statistic of the rounds; rho: predicted vs measured (mean of two "
              "side-by-side sessions); retest: session vs session, the ceiling for any predictor on this "
              "machine; noisy: of 2 x archs measurements")
        print(f"{'space':<28} {'archs':>5} {'rho':>6} {'retest':>6} {'median err %':>12} {'max err %':>9} "
              f"{'measured ms':>17} {'units':>5} {'noisy':>5}")
        results = []
        for path in args.spaces:
            r = evaluate_space(path, args.archs, args.seed, cache)
            results.append(r)
            low, high = r["measured_range_ms"]
            verdict = "ok" if r["spearman_rho"] >= 0.9 and r["median_abs_pct_error"] <= 10 else "MISS"
            print(f"{path.name:<28} {r['archs']:>5} {r['spearman_rho']:6.3f} {r['retest_rho']:6.3f} "
                  f"{r['median_abs_pct_error']:12.1f} "
                  f"{r['max_abs_pct_error']:9.1f} {low:8.2f}-{high:8.2f} {r['units_in_table']:>5} "
                  f"{r['noisy_measurements']:>5}  {verdict}   ({r['setup']})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "spaces": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
