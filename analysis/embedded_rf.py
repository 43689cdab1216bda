"""Does the receptive field matter on the embedded dataset? Train one network per kernel size.

Takes a space file (default: the quickstart), and for each kernel size K trains the space's
model with every stage `kK-static` from scratch, with the space's data, augmentation,
optimizer, schedule and supernet epoch budget, through the same code `morf-search run`
uses; then prints validation accuracy per K and seed, and the gap between 7x7 and 3x3.
A dataset on which that gap is small gives a search no receptive-field signal.

    python analysis/embedded_rf.py [search_spaces/quickstart.yaml] [--seeds 0 1] [--kernels 3 5 7 9]
    python analysis/embedded_rf.py --samples docs/embedded_samples.png   # one image per class, enlarged
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from morf_search.core.device import resolve_device
from morf_search.models.arch import Arch
from morf_search.space.schema import load_space
from morf_search.space.search_space import SearchSpace
from morf_search.training.data import load_splits, make_loader
from morf_search.training.embedded import EMBEDDED_CLASSES, load_embedded
from morf_search.training.evaluate import cache_batches, top1_accuracy
from morf_search.training.loop import fit


def save_samples(path: str, image_size: int = 32, scale: int = 4, gap: int = 2) -> None:
    """A strip with the first validation image of each class, enlarged without smoothing."""
    images, labels = load_embedded("val", image_size, num_val=200)
    tiles = [np.kron(images[np.argmax(labels == c)], np.ones((scale, scale, 1), np.uint8))
             for c in range(len(EMBEDDED_CLASSES))]
    spacer = np.full((image_size * scale, gap * scale, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([p for t in tiles for p in (t, spacer)][:-1], axis=1)).save(path)
    print(f"{path}: " + ", ".join(EMBEDDED_CLASSES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("space", nargs="?", default="search_spaces/quickstart.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7, 9])
    parser.add_argument("--epochs", type=int, help="default: the space's supernet epochs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--samples", metavar="PNG", help="only write one image per class to this file")
    args = parser.parse_args()
    if args.samples:
        return save_samples(args.samples)
    torch.set_num_threads(args.threads)

    config = load_space(args.space)
    device = resolve_device(config.device)
    splits = load_splits(config.data)
    val = cache_batches(make_loader(splits.val, 256, config.data.workers, shuffle=False))
    space = SearchSpace(config)
    stages = len(space.stages)
    epochs = config.supernet.epochs if args.epochs is None else args.epochs
    print(f"{args.space}: {config.model.timm_name} {config.model.timm_kwargs()}, {config.data.dataset} "
          f"{config.data.image_size}px, {len(splits.train)} train / {len(splits.val)} val images, "
          f"{splits.num_classes} classes, {epochs} epochs, {args.threads} threads, device {device}")

    results = {}
    for kernel in args.kernels:
        arch = Arch.parse("_".join([f"k{kernel}-static"] * stages))
        for seed in args.seeds:
            start = time.perf_counter()
            torch.manual_seed(seed)
            model = space.build_model(arch, splits.num_classes).to(device)
            loader = make_loader(splits.train, config.data.batch_size, config.data.workers, shuffle=True,
                                 seed=seed, drop_last=True)
            fit(model, loader, config.supernet, device, seed=seed, epochs=epochs, label=f"{arch} seed {seed}")
            results[kernel, seed] = top1_accuracy(model, val, device)
            print(f"  {arch} seed {seed}: {results[kernel, seed]:.1f}% ({time.perf_counter() - start:.0f} s)",
                  flush=True)

    print(f"\n{'kernel':>6} {'mean':>7}  " + " ".join(f"{f'seed {s}':>7}" for s in args.seeds))
    means = {k: statistics.mean(results[k, s] for s in args.seeds) for k in args.kernels}
    for kernel in args.kernels:
        print(f"{f'{kernel}x{kernel}':>6} {means[kernel]:>6.1f}%  "
              + " ".join(f"{results[kernel, s]:>6.1f}%" for s in args.seeds))
    if 3 in means and 7 in means:
        print(f"\ngap 7x7 - 3x3: {means[7] - means[3]:+.1f} points")


if __name__ == "__main__":
    main()
