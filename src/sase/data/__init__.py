"""Datasets for `sase search`, `sase train` and `sase eval`: one registry of builders, one entry point.

    train_set, spec = build_dataset("cifar10", "data", train=True)
    model = create_model("resnet20", num_classes=spec.num_classes)

Every dataset yields (float32 image (3, S, S), normalised, int label); `spec` says what S, the
number of classes and the normalisation are. `DATASETS` is the only place dataset names live.
"""
from __future__ import annotations

from torch.utils.data import Dataset

from .cifar import build_cifar10, build_cifar100
from .cluttered import build_cluttered_digits
from .digits import build_digits
from .imagefolder import FolderCheck, ImageFolderDataset, build_imagefolder
from .in_memory import InMemoryImages
from .spec import DatasetBuilder, DataSpec, PathLike

DATASETS: dict[str, DatasetBuilder] = {
    "digits": build_digits,  # scikit-learn's bundled 8x8 digits: needs no files, the offline default
    "cluttered-digits": build_cluttered_digits,  # one digit among fragments of others on 32x32: offline, harder
    "cifar10": build_cifar10,  # python version of CIFAR-10 under root (Wang et al., 2024)
    "cifar100": build_cifar100,  # python version of CIFAR-100 under root
    "imagefolder": build_imagefolder,  # root/train/<class>/<image>, root/val/<class>/<image> (Wang et al., 2024)
}


def build_dataset(name: str, root: PathLike | None = None, *, train: bool, augment: bool | None = None,
                  image_size: int | None = None, download: bool = False) -> tuple[Dataset, DataSpec]:
    """One split of dataset `name`: the training split if `train`, else the test / validation split.

    `augment` defaults to `train`; `image_size` to the dataset's own (digits 16, cluttered digits 32,
    CIFAR 32, folders 224).
    `download` fetches CIFAR when its files are missing; nothing else can be downloaded.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return DATASETS[name](root, train=train, augment=train if augment is None else augment,
                          image_size=image_size, download=download)


__all__ = ["DATASETS", "DataSpec", "DatasetBuilder", "FolderCheck", "ImageFolderDataset", "InMemoryImages",
           "build_dataset"]
