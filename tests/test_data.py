"""Real dataset formats, built as small fixtures on disk and read through the real code."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from morf_search.space.schema import DataConfig
from morf_search.training.data import DataError, load_splits, make_loader


def write_cifar10(root, per_batch=6, test=5):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"data": rng.integers(0, 256, (test, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(test)]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder


def write_cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, count in (("train", 8), ("test", 4)):
        (folder / name).write_bytes(pickle.dumps({
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            b"fine_labels": [int(v) for v in rng.integers(0, 100, count)]}))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}))
    return folder


def write_image_folder(root, classes=("cat", "dog", "owl"), per_class=3):
    for split in ("train", "val"):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.full((20, 24, 3), 40 * index + i, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def config(dataset, **kwargs):
    return DataConfig(dataset=dataset, image_size=16, batch_size=4, **kwargs)


def test_cifar10_pickle_directory_loads_with_labels_and_transforms(tmp_path):
    folder = write_cifar10(tmp_path)
    for given in (tmp_path, folder):  # the parent or the batches folder itself
        splits = load_splits(config(f"cifar10:{given}"))
        assert len(splits.train) == 30 and len(splits.val) == 5 and splits.num_classes == 10
        image, label = splits.val[3]
        assert image.shape == (3, 16, 16) and label == 3 and splits.classes[3] == "c3"
    images, labels = next(iter(make_loader(splits.train, 4, 0, shuffle=True)))
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64


def test_cifar100_uses_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    splits = load_splits(config(f"cifar100:{tmp_path}"))
    assert splits.num_classes == 100 and len(splits.train) == 8 and splits.classes[7] == "f7"


def test_cifar_pixels_arrive_in_image_layout(tmp_path):
    folder = write_cifar10(tmp_path)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    splits = load_splits(DataConfig(dataset=f"cifar10:{tmp_path}", image_size=32, mean=(0, 0, 0), std=(1, 1, 1)))
    image, _ = splits.val[0]
    expected = batch[b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-6)


def test_cifar_errors_name_the_file(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing"):
        load_splits(config(f"cifar10:{tmp_path}"))
    (folder / "data_batch_3").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR python pickle"):
        load_splits(config(f"cifar10:{tmp_path}"))
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(DataError, match=r"data_batch_3: labels must lie in 0\.\.9 .*found 0\.\.10"):
        load_splits(config(f"cifar10:{tmp_path}"))


def test_cifar_loader_refuses_pickled_code(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [print]}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_splits(config(f"cifar10:{tmp_path}"))


def test_image_folder_tree_loads_with_shared_class_map(tmp_path):
    write_image_folder(tmp_path)
    splits = load_splits(config(f"imagefolder:{tmp_path}"))
    assert splits.classes == ["cat", "dog", "owl"] and len(splits.train) == 9 and len(splits.val) == 9
    image, label = splits.val[8]
    assert image.shape == (3, 16, 16) and label == 2


def test_image_folder_without_val_is_a_clear_error(tmp_path):
    write_image_folder(tmp_path)
    for path in (tmp_path / "val").rglob("*"):
        if path.is_file():
            path.unlink()
    for path in sorted((tmp_path / "val").rglob("*"), reverse=True):
        path.rmdir()
    (tmp_path / "val").rmdir()
    with pytest.raises(ValueError, match="needs train/ and val/ subfolders"):  # the schema refuses it
        config(f"imagefolder:{tmp_path}")


def test_timm_dataset_names_pass_through_with_clear_errors(tmp_path):
    with pytest.raises(DataError, match="timm could not open 'torch/cifar10:.*set data.download: true"):
        load_splits(config(f"torch/cifar10:{tmp_path}"))
    write_cifar10(tmp_path)  # torchvision's own CIFAR class checks md5 sums, which fixtures do not match
    with pytest.raises(DataError, match="timm could not open"):
        load_splits(config(f"torch/cifar10:{tmp_path}"))


def test_timm_folder_dataset_passes_through(tmp_path):
    write_image_folder(tmp_path)
    splits = load_splits(config(f"torch/image_folder:{tmp_path}"))
    assert splits.num_classes == 3 and len(splits.train) == 9
