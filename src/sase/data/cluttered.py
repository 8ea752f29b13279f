"""'cluttered-digits': one scikit-learn digit on a larger canvas, among fragments of other digits and noise.

A small offline cousin of the cluttered MNIST of Mnih et al., "Recurrent Models of Visual Attention"
(NeurIPS 2014), made from scikit-learn's 1797 bundled 8x8 digits, so that where a network looks matters.
Each image holds one whole digit (its label), scaled up to about 13/32 of the canvas side and placed at
random; around it lie `FRAGMENTS` square fragments, half a digit wide, cut from digits of *other*
classes at the same scale, over uniform noise. Layers are combined by a pixel-wise maximum, so clutter
can fill the blank between the digit's strokes but never dims its ink.

The 80/20 split of the source digits is the one of 'digits' (`digits.split_indices`): every digit and
every fragment of a training image comes from a training digit, and likewise for test, so no test image
shares strokes with the training set. A fixed seed makes 6000 training and 2000 test images; the same
seed gives the same placements and clutter on every run and machine (numpy's RandomState stream never
changes), and everything scales with the canvas, so any `image_size` shows the same kind of scene.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .digits import NUM_CLASSES, split_indices
from .in_memory import InMemoryImages
from .spec import DataSpec, PathLike
from .transforms import shift_transform

DEFAULT_SIZE = 32  # side of the canvas, unless asked otherwise
GENERATION_SEED = 0  # seed of the placements, fragments and noise of the built-in dataset
TRAIN_SIZE = 6000  # images in the training split (each training digit used ~4 times)
TEST_SIZE = 2000  # images in the test split (each test digit used ~6 times)
DIGIT_SCALE = 13 / 32  # side of the labelled digit as a share of the canvas side: 13 px on 32
FRAGMENT_SCALE = 0.5  # side of a fragment as a share of the digit side (rounded: 6 px of 13 on 32)
# Fragments per image at every size: they scale with the canvas, so a fixed count covers the same share.
# Three: ResNet-20 without attention gets past chance within 2 epochs at 16x16 (five kept it near 20% there).
FRAGMENTS = 3
NOISE = 0.3  # background noise is uniform in [0, NOISE]; full ink is 1
SHIFT_SCALE = 1 / 16  # augmentation: random translation by up to this share of the side (2 px on 32)


@dataclass(frozen=True)
class ClutteredDigits:
    """One generated split; arrays are read-only because generations are cached and shared."""

    images: np.ndarray  # (N, S, S) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64: class of the one whole digit
    sources: np.ndarray  # (N,) index, into load_digits(), of the whole digit
    fragment_sources: np.ndarray  # (N, FRAGMENTS) indices, into load_digits(), of the digits the fragments come from
    corners: np.ndarray  # (N, 2) top and left of the digit's digit_size x digit_size box
    digit_size: int  # side of the pasted digit in pixels


def digit_size(image_size: int) -> int:
    """Side in pixels of the labelled digit on an image_size canvas."""
    return max(1, round(DIGIT_SCALE * image_size))


@lru_cache(maxsize=1)
def _source_digits() -> tuple[torch.Tensor, np.ndarray]:
    """All 1797 digits in [0, 1], (N, 1, 8, 8), and their labels (N,)."""
    from sklearn.datasets import load_digits  # imported here: sklearn takes a second to import

    digits = load_digits()
    return torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0, digits.target.astype(np.int64)


@lru_cache(maxsize=8)
def scaled_digits(side: int) -> np.ndarray:
    """All 1797 digits resized to side x side, (N, side, side) float32 in [0, 1], read-only."""
    images, _ = _source_digits()
    if side != images.shape[-1]:
        # bilinear as 'digits' resizes; antialias matters only when shrinking below 8x8
        images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False,
                               antialias=True).clamp_(0.0, 1.0)
    out = images[:, 0].numpy().copy()
    out.flags.writeable = False
    return out


def _paste_max(canvas: np.ndarray, patches: np.ndarray, corners: np.ndarray) -> None:
    """canvas[n] = max(canvas[n], patches[n] placed at corners[n]), in place; one patch per image."""
    n, h, w = patches.shape
    rows = corners[:, :1] + np.arange(h)  # (n, h)
    cols = corners[:, 1:] + np.arange(w)  # (n, w)
    index = (np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :])  # broadcasts to (n, h, w)
    canvas[index] = np.maximum(canvas[index], patches)


def _crops(scaled: np.ndarray, sources: np.ndarray, corners: np.ndarray, side: int) -> np.ndarray:
    """side x side windows of scaled[sources[m]] at corners[m], (M, side, side)."""
    rows = corners[:, :1] + np.arange(side)  # (M, side)
    cols = corners[:, 1:] + np.arange(side)  # (M, side)
    return scaled[sources[:, None, None], rows[:, :, None], cols[:, None, :]]


def _other_class_sources(rs: np.random.RandomState, pool: np.ndarray, pool_labels: np.ndarray,
                         labels: np.ndarray, k: int) -> np.ndarray:
    """(N, k) digits drawn from `pool`, each of a class other than labels[n], classes uniform."""
    # Sort the pool by class so that the digits of class c are one slice, order[start[c]:start[c] + count[c]].
    order = pool[np.argsort(pool_labels, kind="stable")]
    count = np.bincount(pool_labels, minlength=NUM_CLASSES)
    start = np.cumsum(count) - count
    classes = (labels[:, None] + rs.randint(1, NUM_CLASSES, size=(len(labels), k))) % NUM_CLASSES  # never labels[n]
    offsets = (rs.random_sample(classes.shape) * count[classes]).astype(np.int64)
    return order[start[classes] + offsets]


@lru_cache(maxsize=8)
def generate_cluttered(train: bool, image_size: int = DEFAULT_SIZE, seed: int = GENERATION_SEED) -> ClutteredDigits:
    """One split of cluttered digits on image_size x image_size canvases, the same for the same arguments.

    Cached: the result is shared between callers, so its arrays are read-only.
    """
    _, all_labels = _source_digits()
    pool = split_indices(len(all_labels), train)
    count = TRAIN_SIZE if train else TEST_SIZE
    side = digit_size(image_size)
    piece = max(1, round(FRAGMENT_SCALE * side))
    scaled = scaled_digits(side)
    rs = np.random.RandomState([seed, int(train)])  # the two splits draw different streams

    # Every digit of the split is used equally often (give or take one), in a random order.
    sources = pool[np.resize(rs.permutation(len(pool)), count)]
    labels = all_labels[sources]
    corners = rs.randint(0, image_size - side + 1, size=(count, 2))
    fragment_sources = _other_class_sources(rs, pool, all_labels[pool], labels, FRAGMENTS)
    cut_at = rs.randint(0, side - piece + 1, size=(count, FRAGMENTS, 2))  # window inside the source digit
    put_at = rs.randint(0, image_size - piece + 1, size=(count, FRAGMENTS, 2))  # where it lands on the canvas
    canvas = (rs.random_sample((count, image_size, image_size)) * NOISE).astype(np.float32)

    fragments = _crops(scaled, fragment_sources.reshape(-1), cut_at.reshape(-1, 2), piece)
    fragments = fragments.reshape(count, FRAGMENTS, piece, piece)
    for j in range(FRAGMENTS):  # one paste per fragment slot: fragments of one image may overlap each other
        _paste_max(canvas, fragments[:, j], put_at[:, j])
    _paste_max(canvas, scaled[sources], corners)

    for array in (canvas, labels, sources, fragment_sources, corners):
        array.flags.writeable = False
    return ClutteredDigits(canvas, labels, sources, fragment_sources, corners, side)


@lru_cache(maxsize=8)
def _statistics(image_size: int) -> tuple[float, float]:
    """Mean and std of the training images at this size, shared by both splits."""
    images = generate_cluttered(True, image_size).images
    return float(images.mean(dtype=np.float64)), float(images.std(dtype=np.float64))


def build_cluttered_digits(root: PathLike | None = None, *, train: bool, augment: bool,
                           image_size: int | None = None, download: bool = False
                           ) -> tuple[InMemoryImages, DataSpec]:
    """One split of cluttered digits. `root` and `download` are accepted for a uniform registry and unused."""
    size = DEFAULT_SIZE if image_size is None else image_size
    data = generate_cluttered(train, size)
    mean, std = _statistics(size)
    images = torch.from_numpy((data.images - mean) / std).unsqueeze(1)  # (N, 1, S, S), a fresh array
    split = images.expand(-1, 3, -1, -1)  # (N, 3, S, S) view: one grey plane shared by 3 channels
    # A shifted image exposes a border; fill it with the average background noise, not with ink or a hole.
    fill = (NOISE / 2 - mean) / std
    transform = shift_transform(size, max(1, round(SHIFT_SCALE * size)), fill=fill) if augment else None
    spec = DataSpec("cluttered-digits", NUM_CLASSES, size, (mean,) * 3, (std,) * 3)
    return InMemoryImages(split, torch.tensor(data.labels), transform), spec
