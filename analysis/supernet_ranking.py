"""Does inherited-weight (one-shot) accuracy rank architectures like standalone training does?

Takes a run's trained supernet (or trains one for the space), samples archs of the space,
scores each one-shot and by training it from scratch with the supernet's own recipe, and
reports Kendall's tau (target >= 0.4) and Spearman's rho between the two rankings.

    python analysis/supernet_ranking.py --run runs/quickstart [--archs 10] [--epochs 8]
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from scipy.stats import kendalltau, spearmanr

from morf_search.core.device import resolve_device
from morf_search.core.fileio import load_weights
from morf_search.rundir import RunDir
from morf_search.space.search_space import SearchSpace
from morf_search.training.data import load_splits, make_loader
from morf_search.training.evaluate import OneShotEvaluator, top1_accuracy
from morf_search.training.loop import fit
from morf_search.training.supernet import SuperNet


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run whose supernet phase is done")
    parser.add_argument("--archs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None, help="standalone epochs (default: the supernet's)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    run = RunDir.open(args.run)
    config = run.load_space()
    space = SearchSpace(config)
    device = resolve_device(config.device)
    splits = load_splits(config.data)
    supernet = SuperNet(space, splits.num_classes, device)
    supernet.model.load_state_dict(load_weights(run.path / "supernet.safetensors", device))
    evaluator = OneShotEvaluator(supernet, splits, config, device)
    rng = random.Random(args.seed)
    archs = list(dict.fromkeys([space.smallest(), space.largest(), *space.single_field_references()]))
    while len(archs) < args.archs:
        arch = space.sample(rng)
        if arch not in archs:
            archs.append(arch)
    epochs = args.epochs or config.supernet.epochs
    data = config.data
    print(f"# {run.path}: {len(archs)} archs; standalone training {epochs} epochs with the supernet recipe")
    print(f"{'arch':<48} {'one-shot %':>10} {'standalone %':>12}")
    oneshot, standalone = [], []
    for arch in archs:
        oneshot.append(evaluator(arch)["accuracy"])
        torch.manual_seed(config.seed)
        model = space.build_model(arch, splits.num_classes)
        loader = make_loader(splits.train, data.batch_size, data.workers, shuffle=True, seed=config.seed,
                             drop_last=True)
        fit(model, loader, config.supernet, device, seed=config.seed, epochs=epochs, label=f"standalone {arch}")
        standalone.append(top1_accuracy(model, evaluator.val, device))
        print(f"{str(arch):<48} {oneshot[-1]:10.2f} {standalone[-1]:12.2f}", flush=True)
    tau = kendalltau(oneshot, standalone).statistic
    rho = spearmanr(oneshot, standalone).statistic
    print(f"Kendall tau {tau:.3f} ({'ok' if tau >= 0.4 else 'MISS'}: target >= 0.4), Spearman rho {rho:.3f}, "
          f"{len(archs)} archs")


if __name__ == "__main__":
    main()
