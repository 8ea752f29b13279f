"""'imagefolder': images in the ImageNet layout, root/train/<class>/<image> and root/val/<class>/<image>.

The class list is always read from train/, so a label means the same class in both splits. Files are
found by torchvision's `make_dataset` (image extensions, recursive, sorted); hidden files and folders
are left out (`.ipynb_checkpoints`, macOS `._x.jpg` files are not classes or images). Files that are
not sound images are skipped with one message on stderr, and the build fails when more than a share of
them are bad (Wang et al., 2024 for the transforms).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset

from .image_files import find_problems, load_rgb
from .spec import IMAGENET_MEAN, IMAGENET_STD, DataSpec, PathLike
from .transforms import imagenet_transform

DEFAULT_SIZE = 224  # side of the crops the model sees
LAYOUT = "root/train/<class>/<image> and root/val/<class>/<image>"


@dataclass(frozen=True)
class FolderCheck:
    """How hard to look at the image files before using them."""

    full: bool = False  # decode every image (slow on large sets) instead of checking header and end marker
    max_bad_fraction: float = 0.1  # fail when more than this share of the image files is unreadable
    threads: int = 16  # files checked in parallel
    shown: int = 3  # bad paths named in the message / error


class ImageFolderDataset(Dataset):
    """(path, label) samples decoded to RGB and transformed; attributes as torchvision's ImageFolder."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform: Callable) -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.classes = classes
        self.class_to_idx = {name: i for i, name in enumerate(classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label


def _is_image_file(path: str) -> bool:
    return not os.path.basename(path).startswith(".") and has_file_allowed_extension(path, IMG_EXTENSIONS)


def _class_folders(split_dir: Path) -> list[str]:
    """The sorted class folder names of a split; ValueError if it holds none."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"image folder split not found: {split_dir} (expected {LAYOUT}; the class "
                                f"list is read from train/)")
    entries = [e for e in os.scandir(split_dir) if not e.name.startswith(".")]
    classes = sorted(e.name for e in entries if e.is_dir())
    if not classes:
        images = sum(1 for e in entries if e.is_file() and _is_image_file(e.name))
        found = f"{images} image(s) directly in it, a flat folder" if images else "it is empty"
        raise ValueError(f"{split_dir} has no class subfolders ({found}); put each class's images in "
                         f"{split_dir}/<class>/ (expected {LAYOUT})")
    return classes


def _require_images(split_dir: Path, folders: list[str], samples: list[tuple[str, int]],
                    classes: list[str], what: str) -> None:
    """ValueError naming the class folders of `folders` that hold no sample."""
    filled = {classes[label] for _, label in samples}
    empty = [c for c in folders if c not in filled]
    if empty:
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise ValueError(f"{split_dir}: {len(empty)} class folder(s) with no {what}: {shown} (each class "
                         f"folder needs at least one {'/'.join(IMG_EXTENSIONS)} file)")


def _drop_unreadable(split_dir: Path, samples: list[tuple[str, int]], check: FolderCheck) -> list[tuple[str, int]]:
    problems = find_problems([p for p, _ in samples], full=check.full, threads=check.threads)
    if not problems:
        return samples
    first = "; ".join(f"{p}: {why}" for p, why in list(problems.items())[:check.shown])
    summary = f"{len(problems)} of {len(samples)} image files under {split_dir} are unreadable ({first}" \
              f"{'; ...' if len(problems) > check.shown else ''})"
    if len(problems) > check.max_bad_fraction * len(samples) or len(problems) == len(samples):
        raise ValueError(f"{summary}: more than {check.max_bad_fraction:.0%} of the files; check the copy "
                         f"of the dataset")
    # a message for the user, not a Python warning: warnings filters would hide it or turn it into an error
    print(f"warning: {summary}; skipping them", file=sys.stderr, flush=True)
    return [(p, label) for p, label in samples if p not in problems]


def load_samples(root: Path, train: bool,
                 check: FolderCheck = FolderCheck()) -> tuple[list[tuple[str, int]], list[str]]:
    """The checked (path, label) samples of one split and the class names from train/."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (expected {LAYOUT})")
    classes = _class_folders(root / "train")
    split_dir = root / ("train" if train else "val")
    folders = classes if train else _class_folders(split_dir)
    unknown = sorted(set(folders) - set(classes))
    if unknown:
        raise ValueError(f"{split_dir}: {len(unknown)} class folder(s) not in {root / 'train'}: "
                         f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''} (labels come from "
                         f"train/, so val/ may only hold classes that train/ has)")
    class_to_idx = {name: i for i, name in enumerate(classes)}
    # make_dataset skips class folders absent from this split; a val/ may cover fewer classes
    samples = make_dataset(str(split_dir), class_to_idx, is_valid_file=_is_image_file, allow_empty=True)
    _require_images(split_dir, folders, samples, classes, "image files")
    samples = _drop_unreadable(split_dir, samples, check)
    _require_images(split_dir, folders, samples, classes, "readable image")
    return samples, classes


def build_imagefolder(root: PathLike | None, *, train: bool, augment: bool, image_size: int | None = None,
                      download: bool = False,
                      check: FolderCheck = FolderCheck()) -> tuple[ImageFolderDataset, DataSpec]:
    """One split of an image folder, augmented as ImageNet training is when `augment` (Wang et al., 2024)."""
    if root is None:
        raise ValueError(f"the imagefolder dataset needs a root folder laid out as {LAYOUT}")
    if download:
        raise ValueError("imagefolder cannot be downloaded; place the images in "
                         f"{LAYOUT} and drop --download")
    size = DEFAULT_SIZE if image_size is None else image_size
    samples, classes = load_samples(Path(root).expanduser(), train, check)
    spec = DataSpec("imagefolder", len(classes), size, IMAGENET_MEAN, IMAGENET_STD)
    return ImageFolderDataset(samples, classes, imagenet_transform(augment, size)), spec
