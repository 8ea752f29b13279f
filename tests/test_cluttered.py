"""cluttered-digits: determinism, disjoint source digits, shapes at any canvas size, the digit really on
its canvas, normalisation, and the registry entry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from sase.data import DATASETS, build_dataset
from sase.data.cluttered import (DEFAULT_SIZE, NOISE, TEST_SIZE, TRAIN_SIZE, build_cluttered_digits, digit_size,
                                 generate_cluttered)
from sase.data.digits import split_indices

SIZES = [20, DEFAULT_SIZE, 45]  # small, default, and an odd size no other test uses
N_DIGITS = 1797  # digits bundled with scikit-learn


def _plain(train: bool, size: int | None = None):
    return build_dataset("cluttered-digits", train=train, augment=False, image_size=size)


def _scaled_source(side: int) -> np.ndarray:
    """The bundled digits at side x side, resized here independently of the module: (1797, side, side)."""
    images = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 16.0
    if side != 8:
        images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False,
                               antialias=True).clamp_(0.0, 1.0)
    return images[:, 0].numpy()


def test_generation_is_deterministic_and_depends_on_the_seed():
    uncached = generate_cluttered.__wrapped__  # the cache would hand back the same object and prove nothing
    first, again, other = uncached(False, 20, 5), uncached(False, 20, 5), uncached(False, 20, 6)
    for name in ("images", "labels", "sources", "fragment_sources", "corners"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    assert not np.array_equal(first.images, other.images)
    assert not np.array_equal(first.corners, other.corners)
    # the built dataset is the default seed's generation, and two builds agree
    a, b = _plain(False, 20)[0], _plain(False, 20)[0]
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert np.array_equal(generate_cluttered.__wrapped__(False, 20).labels, a.labels.numpy())


def test_train_and_test_use_disjoint_source_digits():
    train, test = generate_cluttered(True), generate_cluttered(False)
    # every digit of a split is used, and only digits of that split: whole digits and fragments alike
    assert set(train.sources.tolist()) == set(split_indices(N_DIGITS, True).tolist())
    assert set(test.sources.tolist()) == set(split_indices(N_DIGITS, False).tolist())
    train_all = set(train.sources.tolist()) | set(train.fragment_sources.ravel().tolist())
    test_all = set(test.sources.tolist()) | set(test.fragment_sources.ravel().tolist())
    assert not train_all & test_all
    assert train_all <= set(split_indices(N_DIGITS, True).tolist())
    # fragments never come from a digit of the labelled class: they cannot help, only distract
    targets = load_digits().target
    for data in (train, test):
        assert np.array_equal(targets[data.sources], data.labels)
        assert (targets[data.fragment_sources] != data.labels[:, None]).all()
        assert len(np.unique(targets[data.fragment_sources])) == 10


@pytest.mark.parametrize("size", SIZES)
def test_shapes_and_labels_at_any_canvas_size(size):
    for train, expected in ((True, TRAIN_SIZE), (False, TEST_SIZE)):
        ds, spec = _plain(train, size)
        assert len(ds) == expected
        assert spec.name == "cluttered-digits" and spec.num_classes == 10 and spec.image_size == size
        images, labels = next(iter(DataLoader(ds, batch_size=64)))
        assert images.shape == (64, 3, size, size) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and torch.isfinite(images).all()
        assert torch.equal(images[:, 0], images[:, 2])  # grey replicated to three channels
        counts = torch.bincount(ds.labels, minlength=10)
        assert len(counts) == 10 and counts.min() > expected // 20  # every class, roughly balanced


@pytest.mark.parametrize("size", SIZES)
def test_each_image_contains_its_digit(size):
    data = generate_cluttered(False, size)
    side = data.digit_size
    assert side == digit_size(size) and abs(side - 13 * size / 32) <= 0.5  # scaled with the canvas
    scaled = _scaled_source(side)
    n = 300
    rows = data.corners[:n, :1] + np.arange(side)  # (n, side)
    cols = data.corners[:n, 1:] + np.arange(side)  # (n, side)
    regions = data.images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (n, side, side)
    digits = scaled[data.sources[:n]]
    # Clutter is combined by maximum: it may cover the blank around a stroke, but never dims the ink.
    assert (regions >= digits).all()
    ink = digits > NOISE  # brighter than any noise: only a fragment can lie on top of it
    assert (regions[ink] == digits[ink]).mean() > 0.75
    # the check has teeth: the same box one digit-width away does not hold the digit
    moved = (data.corners[:n] + side) % (size - side + 1)
    rows, cols = moved[:, :1] + np.arange(side), moved[:, 1:] + np.arange(side)
    elsewhere = data.images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    assert (elsewhere[ink] == digits[ink]).mean() < 0.5


def test_clutter_lies_outside_the_digit():
    data = generate_cluttered(False)
    inside = np.zeros(data.images.shape, dtype=bool)
    for i, (top, left) in enumerate(data.corners):
        inside[i, top:top + data.digit_size, left:left + data.digit_size] = True
    ink_outside = ((data.images > NOISE) & ~inside).sum(axis=(1, 2))
    assert np.median(ink_outside) > data.digit_size  # strokes of other digits around most digits
    assert data.images.min() >= 0 and data.images.max() <= 1


def test_normalised_with_the_training_statistics():
    train, spec = _plain(True)
    test, test_spec = _plain(False)
    assert spec == test_spec
    assert abs(train.images.mean().item()) < 1e-3 and abs(train.images.std().item() - 1) < 1e-2
    raw = generate_cluttered(True).images.astype(np.float64)
    assert spec.mean == pytest.approx((raw.mean(),) * 3) and spec.std == pytest.approx((raw.std(),) * 3)
    # the test split is normalised with the training statistics, not its own
    restored = test.images[:, 0] * spec.std[0] + spec.mean[0]
    assert torch.allclose(restored, torch.tensor(generate_cluttered(False).images), atol=1e-5)


def test_registry_entry_augments_the_training_split():
    assert DATASETS["cluttered-digits"] is build_cluttered_digits and "digits" in DATASETS
    augmented, spec = build_dataset("cluttered-digits", train=True)  # augment defaults to train
    plain, _ = _plain(True)
    assert spec.image_size == DEFAULT_SIZE and len(augmented) == TRAIN_SIZE
    torch.manual_seed(0)
    changed = [not torch.equal(plain[i][0], augmented[i][0]) for i in range(20)]
    assert sum(changed) >= 10 and augmented[0][0].shape == (3, DEFAULT_SIZE, DEFAULT_SIZE)
    assert all(augmented[i][1] == plain[i][1] for i in range(20))
    assert build_dataset("cluttered-digits", train=False)[0].transform is None


def test_items_and_cache_cannot_be_corrupted_by_callers():
    ds, _ = _plain(False)
    before = ds[0][0].clone()
    ds[0][0].zero_()  # an item is the caller's to change
    assert torch.equal(ds[0][0], before)
    data = generate_cluttered(False)
    with pytest.raises(ValueError):
        data.images[0, 0, 0] = 1.0  # the cached generation is shared: read-only
    assert torch.equal(_plain(False)[0].images, ds.images)  # a second build is unaffected by the first
