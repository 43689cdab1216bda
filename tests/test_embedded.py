"""The embedded dataset: deterministic, balanced, cached, self-healing, and its labels are in the pixels."""
import numpy as np
import pytest

from morf_search.space.schema import DataConfig
from morf_search.training import embedded
from morf_search.training.data import load_splits
from morf_search.training.embedded import EMBEDDED_CLASSES, load_embedded


def test_same_seed_same_images_and_balanced_labels(tmp_path):
    images, labels = load_embedded("train", 32, num_train=200, seed=3, cache_dir=tmp_path / "a")
    again, again_labels = load_embedded("train", 32, num_train=200, seed=3, cache_dir=tmp_path / "b")
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    assert np.bincount(labels).tolist() == [20] * len(EMBEDDED_CLASSES) and len(EMBEDDED_CLASSES) >= 10
    other, _ = load_embedded("train", 32, num_train=200, seed=4, cache_dir=tmp_path / "a")
    assert not np.array_equal(images, other)
    assert images.std() > 20  # real content, not a blank canvas


def test_validation_split_is_fixed_and_independent_of_the_training_size(tmp_path):
    val, _ = load_embedded("val", 32, num_train=100, num_val=50, cache_dir=tmp_path)
    same, _ = load_embedded("val", 32, num_train=300, num_val=50, cache_dir=tmp_path / "other")
    train, _ = load_embedded("train", 32, num_train=50, num_val=50, cache_dir=tmp_path)
    assert np.array_equal(val, same) and not np.array_equal(val, train)


def test_image_size_is_configurable(tmp_path):
    images, _ = load_embedded("val", 48, num_val=20, cache_dir=tmp_path)
    assert images.shape == (20, 48, 48, 3)
    with pytest.raises(ValueError, match="image_size: embedded images need at least 24 px"):
        load_embedded("val", 20, num_val=20, cache_dir=tmp_path)


def test_second_load_reads_the_cache_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    images, labels = load_embedded("val", 32, num_val=40, cache_dir=tmp_path)
    (cache,) = (tmp_path / "embedded").iterdir()
    monkeypatch.setattr(embedded, "generate", lambda *a: pytest.fail("regenerated despite a valid cache"))
    cached, _ = load_embedded("val", 32, num_val=40, cache_dir=tmp_path)
    assert np.array_equal(cached, images)
    monkeypatch.undo()
    cache.write_bytes(cache.read_bytes()[:100])  # a truncated file, as a killed writer of old might leave
    rebuilt, rebuilt_labels = load_embedded("val", 32, num_val=40, cache_dir=tmp_path)
    assert np.array_equal(rebuilt, images) and np.array_equal(rebuilt_labels, labels)
    assert [p.name for p in (tmp_path / "embedded").iterdir()] == [cache.name]  # no temporary files left


def test_unknown_split_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="split: 'test' is not one of train, val"):
        load_embedded("test", cache_dir=tmp_path)


def test_the_label_is_recoverable_from_the_pixels(tmp_path):
    """A fixed (not learned) detector of the class's displacement names the class of nearly every image."""
    images, labels = load_embedded("val", 32, num_val=200, cache_dir=tmp_path)
    assert (embedded.displacement_evidence(images).argmax(1) == labels).mean() > 0.95


def test_load_splits_serves_embedded_images_through_timm_transforms(tmp_path, monkeypatch):
    monkeypatch.setenv("MORF_SEARCH_CACHE", str(tmp_path))
    splits = load_splits(DataConfig(dataset="embedded", image_size=32, embedded={"num_train": 30, "num_val": 20}))
    image, label = splits.val[0]
    assert image.shape == (3, 32, 32) and splits.classes == list(EMBEDDED_CLASSES) and 0 <= label < 10
    assert len(splits.train) == 30 and len(splits.val) == 20 and (tmp_path / "embedded").is_dir()
