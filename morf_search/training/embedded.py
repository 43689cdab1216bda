"""The embedded default dataset: generated from a seed, no download, cached on disk.

Each image is a Glass pattern: bright dots scattered on a dark, slightly noisy ground,
each dot with a twin of the same colour displaced by one fixed vector, plus as many
unpaired dots. The class is the direction of the displacement (10 directions over 180
degrees, 16 px along the longer axis whatever the image size). No single dot says anything
about the class; only the relation between pixels 16 px apart does, which is what a
receptive field is for. Glass patterns are a classic probe of how vision integrates local pairings
into global structure. ``analysis/embedded_rf.py`` measures how much kernel size matters on them.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..core.fileio import atomic_write, default_cache_dir
from ..space.schema import EMBEDDED_MIN_IMAGE_SIZE as MIN_IMAGE_SIZE

# Twin displacements (rows, columns) in pixels, one per class. A vector and its negative
# make the same pattern, so 10 directions over 180 degrees cover every class.
DISPLACEMENTS = tuple((4 * dy, 4 * dx) for dy, dx in
                      ((0, 4), (1, 4), (2, 4), (4, 4), (4, 2), (4, 1), (4, 0), (4, -1), (4, -2), (4, -4)))
EMBEDDED_CLASSES = tuple(f"pairs at {math.degrees(math.atan2(-dy, dx)) % 180:.0f} deg" for dy, dx in DISPLACEMENTS)
FORMAT_VERSION = 1  # bump when the images change, so stale caches are not reused
SPLITS = ("train", "val")
# Density: 8 pairs and 8 unpaired dots on a 32 px image. Sparser patterns widen the gap between
# small and large kernels (fewer pairs to pool), denser ones make the task easy for any kernel.
_PIXELS_PER_PAIR = 128


def generate(num_images: int, image_size: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """``num_images`` Glass patterns (uint8, N x H x W x 3) with balanced labels (int64), shuffled."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size: embedded images need at least {MIN_IMAGE_SIZE} px, got {image_size}")
    labels = rng.permutation(np.arange(num_images) % len(DISPLACEMENTS))
    pairs = max(1, image_size * image_size // _PIXELS_PER_PAIR)
    images = 0.2 + 0.04 * rng.standard_normal((num_images, image_size, image_size, 3), dtype=np.float32)
    image = np.repeat(np.arange(num_images), pairs)
    dy, dx = np.asarray(DISPLACEMENTS)[labels].repeat(pairs, axis=0).T
    # first dots anywhere their twin still lands on the image
    y = rng.integers(np.maximum(0, -dy), image_size - np.maximum(0, dy))
    x = rng.integers(np.maximum(0, -dx), image_size - np.maximum(0, dx))
    colours = rng.uniform(0.55, 1.0, (len(image), 3)).astype(np.float32)
    images[image, y, x] = colours
    images[image, y + dy, x + dx] = colours
    lone = rng.integers(0, image_size, (2, len(image)))
    images[image, lone[0], lone[1]] = rng.uniform(0.55, 1.0, (len(image), 3)).astype(np.float32)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)


def displacement_evidence(images: np.ndarray) -> np.ndarray:
    """Per image and class, how many bright pixels have a bright twin at that class's displacement.

    A fixed detector, no learning: its argmax is the class of nearly every image, which is
    how the tests check that the labels are in the pixels.
    """
    bright = images.min(axis=-1) > 120
    size = images.shape[1]
    evidence = np.zeros((len(images), len(DISPLACEMENTS)))
    for index, (dy, dx) in enumerate(DISPLACEMENTS):
        rows, cols = slice(max(0, -dy), size - max(0, dy)), slice(max(0, -dx), size - max(0, dx))
        moved_rows, moved_cols = slice(rows.start + dy, rows.stop + dy), slice(cols.start + dx, cols.stop + dx)
        evidence[:, index] = (bright[:, rows, cols] & bright[:, moved_rows, moved_cols]).sum(axis=(1, 2))
    return evidence


def load_embedded(split: str, image_size: int = 32, num_train: int = 10000, num_val: int = 2000, seed: int = 0,
                  cache_dir: Optional[Path] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One split's images and labels, generated once per (seed, size, count) and then read from the cache.

    The validation split has its own random stream, so it is the same images whatever
    ``num_train`` is. A cache file that cannot be read is rebuilt, never trusted.
    """
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    count = num_train if split == "train" else num_val
    path = (Path(cache_dir or default_cache_dir()) / "embedded"
            / f"v{FORMAT_VERSION}-seed{seed}-{image_size}px-{split}{count}.npz")
    cached = _read_cache(path, count, image_size)
    if cached is not None:
        return cached
    images, labels = generate(count, image_size, np.random.default_rng([seed, SPLITS.index(split)]))
    atomic_write(path, lambda tmp: _write_cache(tmp, images, labels))
    return images, labels


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object: np.savez would append ".npz" to a path
        np.savez(handle, images=images, labels=labels)


def _read_cache(path: Path, count: int, image_size: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    try:
        with np.load(path) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # missing, truncated or foreign: regenerate
    if images.shape != (count, image_size, image_size, 3) or labels.shape != (count,):
        return None
    return images, labels
