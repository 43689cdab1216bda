"""Datasets and loaders: the embedded default, CIFAR pickles, ImageFolder trees, timm names, your own.

Every dataset resolves to a train and a validation split that return PIL images, so the
transforms and augmentation come from timm's ``create_transform`` for all of them. Path
problems raise ``DataError`` naming the file or folder and what is expected.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageDataset, create_dataset, create_transform
from torch.utils.data import DataLoader, Dataset, Subset

from ..core.errors import UserError
from ..space.schema import CUSTOM_DATASET, DataConfig
from .embedded import EMBEDDED_CLASSES, load_embedded

CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
_CIFAR_FILES = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                            "batches.meta", b"label_names", b"labels"),
                "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_label_names", b"fine_labels")}


class DataError(UserError):
    """A dataset path that is missing or not in the expected format."""


@dataclass
class DataSplits:
    """A dataset's two splits and what a model needs to know about them."""

    train: Dataset
    val: Dataset
    classes: List[str]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    calibration: Dataset  # training images with evaluation transforms (BN re-estimation)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class CustomData:
    """Your own train and validation datasets for a run started from Python (``data.dataset: custom``).

    Both are map-style datasets of ``(PIL image, class index)`` pairs, as torchvision's and timm's
    datasets give without a transform: the space's ``data`` section adds timm's transforms to
    them. ``mean``/``std`` default to ImageNet's unless the space sets them. They must pickle:
    Ray ships them to the trial and training workers.
    """

    train: Dataset
    val: Dataset
    classes: Sequence[str]
    mean: Tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: Tuple[float, float, float] = IMAGENET_DEFAULT_STD

    def fingerprint(self) -> dict:
        """What a run records of the data, so that resuming it with other data is refused."""
        return {"classes": list(self.classes), "train": len(self.train), "val": len(self.val)}


NO_CUSTOM_DATA = (f"data.dataset: {CUSTOM_DATASET!r} means datasets given from Python, as "
                  "morf_search.Search(space, data=CustomData(train, val, classes)); a space file run from the "
                  "command line names embedded, cifar10:PATH, cifar100:PATH, imagefolder:PATH or a timm dataset")


class ArrayDataset(Dataset):
    """uint8 images (N, H, W, 3) with labels, served as PIL images for timm transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]):
        self.images, self.targets, self.classes = images, labels, list(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        return Image.fromarray(self.images[index]), int(self.targets[index])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only what they hold (numpy arrays), never arbitrary code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; a CIFAR python directory holds data batches, a test batch and meta") from None
    except Exception as err:  # truncated or foreign files fail in many ways inside pickle
        raise DataError(f"{path}: not a CIFAR python pickle ({type(err).__name__}: {err})") from None


def _cifar_arrays(root: Path, kind: str):
    folder, train_files, test_file, meta_file, names_key, labels_key = _CIFAR_FILES[kind]
    if (root / folder).is_dir():
        root = root / folder
    meta = _read_pickle(root / meta_file)

    def split(files):
        images, labels = [], []
        for name in files:
            batch = _read_pickle(root / name)
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                targets = np.asarray(batch[labels_key], dtype=np.int64)
            except (KeyError, ValueError) as err:
                raise DataError(f"{root / name}: not a {kind} batch (needs 'data' of N x 3072 bytes and "
                                f"{labels_key.decode()!r}): {err}") from None
            if targets.size and not 0 <= targets.min() <= targets.max() < len(classes):
                raise DataError(f"{root / name}: labels must lie in 0..{len(classes) - 1} ({len(classes)} classes "
                                f"in {meta_file}); found {targets.min()}..{targets.max()}")
            images.append(data.transpose(0, 2, 3, 1))
            labels.append(targets)
        return np.concatenate(images), np.concatenate(labels)

    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    if not classes:
        raise DataError(f"{root / meta_file}: has no {names_key.decode()!r} list")
    return split(train_files), split([test_file]), classes


def _image_folder(root: Path):
    train_root = root / "train"  # the space file's schema checked that train/ and val/ (or validation/) exist
    val_root = next(root / n for n in ("val", "validation") if (root / n).is_dir())
    try:
        train = ImageDataset(str(train_root))
        val = ImageDataset(str(val_root), class_map=train.reader.class_to_idx)
    except (RuntimeError, KeyError, AssertionError) as err:
        raise DataError(f"{root}: not a usable ImageFolder tree ({err})") from None
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{root}: found no images under train/ or val/")
    classes = sorted(train.reader.class_to_idx, key=train.reader.class_to_idx.get)
    return train, val, classes


def _timm_dataset(spec: str, download: bool):
    name, _, root = spec.partition(":")
    try:
        train = create_dataset(name, root=root or None, split="train", is_training=True, download=download)
        val = create_dataset(name, root=root or None, split="validation", download=download)
    except Exception as err:  # timm and torchvision report missing data with assorted exceptions
        hint = "" if download else " (set data.download: true to let it download)"
        raise DataError(f"data.dataset: timm could not open {spec!r}: {err}{hint}") from None
    classes = list(getattr(train, "classes", None) or getattr(getattr(train, "reader", None), "class_to_idx", {}))
    if not classes:
        raise DataError(f"data.dataset: {spec!r} does not list its classes; set model.num_classes")
    return train, val, classes


def _open(config: DataConfig, cache_dir: Optional[Path], custom: Optional[CustomData]):
    """The raw train and val datasets (PIL images out), class names, and normalization statistics."""
    kind, _, path = config.dataset.partition(":")
    if kind == CUSTOM_DATASET:
        if custom is None:
            raise DataError(NO_CUSTOM_DATA)
        return custom.train, custom.val, list(custom.classes), custom.mean, custom.std
    if kind == "embedded":
        e = config.embedded
        train, val = (ArrayDataset(*load_embedded(split, config.image_size, e.num_train, e.num_val, e.seed, cache_dir),
                                   EMBEDDED_CLASSES) for split in ("train", "val"))
        return train, val, list(EMBEDDED_CLASSES), *_channel_stats(train.images)
    if kind in _CIFAR_FILES:
        train, val, classes = _cifar_arrays(Path(path).expanduser(), kind)
        return ArrayDataset(*train, classes), ArrayDataset(*val, classes), classes, *CIFAR_STATS[kind]
    if kind == "imagefolder":
        return (*_image_folder(Path(path).expanduser()), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return (*_timm_dataset(config.dataset, config.download), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


def load_splits(config: DataConfig, cache_dir: Optional[Path] = None,
                custom: Optional[CustomData] = None) -> DataSplits:
    """Open the configured dataset (``custom``'s for ``data.dataset: custom``); train gets timm's training
    transforms, val and calibration eval ones."""
    train, val, classes, mean, std = _open(config, cache_dir, custom)
    mean, std = tuple(config.mean or mean), tuple(config.std or std)
    evaluation = eval_transform(config, mean, std)
    return DataSplits(Transformed(train, train_transform(config, mean, std)), Transformed(val, evaluation),
                      classes, mean, std, Transformed(train, evaluation))


class Transformed(Dataset):
    """A view of a PIL-image dataset with its own transform, so one dataset serves several purposes."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index):
        image, target = self.base[index]
        return self.transform(image), target


def _channel_stats(images: np.ndarray):
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(pixels.mean(0).round(4).tolist()), tuple(pixels.std(0).round(4).tolist())


def train_transform(config: DataConfig, mean, std) -> Callable:
    aug = config.augmentation
    return create_transform(
        config.image_size, is_training=True, scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip,
        color_jitter=aug.color_jitter, auto_augment=aug.auto_augment, re_prob=aug.re_prob,
        interpolation="bicubic", mean=mean, std=std)


def eval_transform(config: DataConfig, mean, std) -> Callable:
    return create_transform(config.image_size, is_training=False, crop_pct=1.0, interpolation="bicubic",
                            mean=mean, std=std)


def make_loader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool, seed: int = 0,
                limit: Optional[int] = None, drop_last: bool = False) -> DataLoader:
    """A loader over ``dataset`` (its first ``limit`` items if given); shuffling is seeded."""
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, drop_last=drop_last,
                      generator=generator, persistent_workers=workers > 0)
