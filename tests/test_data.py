"""Datasets: the digits split, CIFAR batches in the official format, image folders, and every bad case.

All data is written by the tests in tmp_path (a few images per file); nothing is downloaded.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sase.data import DATASETS, DataSpec, FolderCheck, build_dataset
from sase.data.digits import split_indices
from sase.data.imagefolder import build_imagefolder

from helpers import CIFAR, cifar_batch as _batch, official_pickle as _official_pickle
from helpers import write_cifar as _write_cifar, write_folder as _folder, write_image as _image

# ---------------------------------------------------------------- digits


def _stack(ds) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(images), torch.tensor(labels)


@pytest.fixture(scope="module")
def digits():
    return {train: build_dataset("digits", train=train) for train in (True, False)}


def test_digits_sizes_shapes_labels(digits):
    (train, spec), (test, test_spec) = digits[True], digits[False]
    assert (len(train), len(test)) == (1438, 359)
    assert spec == test_spec and spec.num_classes == 10 and spec.image_size == 16
    for ds in (train, test):
        images, labels = _stack(ds)
        assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.float32
        assert labels.min() >= 0 and labels.max() <= 9 and len(labels.unique()) == 10
        assert torch.equal(images[:, 0], images[:, 2])  # grey replicated to three channels


def test_digits_split_is_deterministic_and_disjoint(digits):
    again, _ = build_dataset("digits", train=False)
    assert torch.equal(_stack(again)[0], _stack(digits[False][0])[0])
    train, test = set(split_indices(1797, True)), set(split_indices(1797, False))
    assert not train & test and len(train | test) == 1797


def test_digits_normalised(digits):
    images, _ = _stack(digits[True][0])  # augment defaults to train: augmented, yet shifts keep the stats close
    plain, _ = _stack(build_dataset("digits", train=True, augment=False)[0])
    assert abs(plain.mean().item()) < 1e-3 and abs(plain.std().item() - 1) < 1e-2
    assert abs(images.mean().item()) < 0.2 and torch.isfinite(images).all()


def test_digits_augment_changes_images(digits):
    torch.manual_seed(0)
    plain, _ = build_dataset("digits", train=True, augment=False)
    augmented = digits[True][0]
    changed = [not torch.equal(plain[i][0], augmented[i][0]) for i in range(20)]
    assert sum(changed) >= 10
    assert augmented[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("size", [8, 5, 28])
def test_digits_image_size_and_loader(size):
    ds, spec = build_dataset("digits", train=False, image_size=size)
    images, labels = next(iter(DataLoader(ds, batch_size=7)))
    assert images.shape == (7, 3, size, size) and labels.dtype == torch.int64 and spec.image_size == size
    images[0].zero_()  # items are the caller's to change: the dataset is not touched
    assert ds[0][0].abs().sum() > 0


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_dataset("mnist", train=True)
    assert all(name in str(err.value) for name in DATASETS)


def test_bad_image_size():
    with pytest.raises(ValueError, match="image_size"):
        build_dataset("digits", train=True, image_size=0)

# ---------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("name", list(CIFAR))
@pytest.mark.parametrize("layout", ["parent", "folder"])
def test_cifar_loads(tmp_path, name, layout):
    labels = _write_cifar(tmp_path, name)
    root = tmp_path if layout == "parent" else tmp_path / CIFAR[name][0]
    for train in (True, False):
        ds, spec = build_dataset(name, root, train=train, augment=False)
        assert spec.name == name and spec.num_classes == CIFAR[name][4] and spec.image_size == 32
        images, got = _stack(ds)
        assert got.tolist() == labels[train] and images.shape == (len(got), 3, 32, 32)
        raw = images * torch.tensor(spec.std).view(3, 1, 1) + torch.tensor(spec.mean).view(3, 1, 1)
        expect = torch.stack([torch.tensor([lab, 100, 200]) for lab in got]).float() / 255  # (N, 3)
        assert torch.allclose(raw.mean((2, 3)), expect, atol=1e-5)


def test_cifar_augment_and_resize(tmp_path):
    _write_cifar(tmp_path, "cifar10")
    torch.manual_seed(0)
    ds, _ = build_dataset("cifar10", tmp_path, train=True)  # augment defaults to train
    plain, _ = build_dataset("cifar10", tmp_path, train=True, augment=False)
    assert ds[0][0].shape == (3, 32, 32) and ds[0][0].dtype == torch.float32
    assert any(not torch.equal(ds[i][0], plain[i][0]) for i in range(len(ds)))  # shifted: padding shows
    big, spec = build_dataset("cifar10", tmp_path, train=False, image_size=40)
    assert big[0][0].shape == (3, 40, 40) and spec.image_size == 40


def _spoil(folder: Path, how: str) -> None:
    batch, _ = _batch(3, "labels", 10, 0)
    if how == "missing file":
        (folder / "data_batch_3").unlink()
        return
    if how == "wrong keys":
        batch[b"label"] = batch.pop(b"labels")
    elif how == "wrong shape":
        batch[b"data"] = batch[b"data"][:, :3000]
    elif how == "wrong dtype":
        batch[b"data"] = batch[b"data"].astype(np.float32)
    elif how == "label out of range":
        batch[b"labels"][1] = 10
    elif how == "label count":
        batch[b"labels"] = batch[b"labels"][:2]
    payload = {"not a pickle": b"this is not a pickle\n", "not a dict": pickle.dumps([1, 2, 3]),
               "unsafe pickle": pickle.dumps(os.getcwd)}.get(how, _official_pickle(batch))
    (folder / "data_batch_3").write_bytes(payload)


@pytest.mark.parametrize("how, error, message", [
    ("missing file", FileNotFoundError, r"lacks data_batch_3 .*--download.*cs\.toronto\.edu"),
    ("wrong keys", ValueError, r"data_batch_3: missing key\(s\) 'labels' \(found: 'batch_label', 'data', "),
    ("wrong shape", ValueError, r"data_batch_3: 'data' is a uint8 array of shape \(3, 3000\); expected"),
    ("wrong dtype", ValueError, r"data_batch_3: 'data' is a float32 array"),
    ("label out of range", ValueError, r"data_batch_3: label 10 in 'labels' is out of range 0\.\.9"),
    ("label count", ValueError, r"data_batch_3: 2 labels in 'labels' for 3 images"),
    ("not a pickle", ValueError, r"data_batch_3: not a readable CIFAR-10 python batch"),
    ("not a dict", ValueError, r"data_batch_3: holds a list"),
    ("unsafe pickle", ValueError, r"data_batch_3: not a readable .*getcwd, which a CIFAR batch never needs"),
])
def test_bad_cifar(tmp_path, how, error, message):
    _write_cifar(tmp_path, "cifar10")
    _spoil(tmp_path / "cifar-10-batches-py", how)
    with pytest.raises(error, match=message):
        build_dataset("cifar10", tmp_path, train=True)
    build_dataset("cifar10", tmp_path, train=False)  # the test split does not read the spoiled file


@pytest.mark.parametrize("name", list(CIFAR))
def test_cifar_missing_folder(tmp_path, name):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(name, tmp_path / "nowhere", train=False)
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / "nowhere" / CIFAR[name][0]) in text
    assert "--download" in text and "https://www.cs.toronto.edu/~kriz/cifar.html" in text


def test_cifar100_files_read_as_cifar10_name_the_key(tmp_path):
    _write_cifar(tmp_path, "cifar100")
    (tmp_path / "cifar-100-python").rename(tmp_path / "cifar-10-batches-py")
    for f in ("train", "test"):
        os.replace(tmp_path / "cifar-10-batches-py" / f, tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(ValueError, match="missing key.*'labels'.*'fine_labels'"):
        build_dataset("cifar10", tmp_path, train=False)

# ---------------------------------------------------------------- image folders

MODES = {"rgb.jpg": "RGB", "grey.png": "L", "alpha.png": "RGBA", "cmyk.jpg": "CMYK", "palette.png": "P"}


def test_imagefolder_modes_load_as_rgb(tmp_path):
    for split in ("train", "val"):
        for i, (name, mode) in enumerate(MODES.items()):
            _image(tmp_path / split / ("cat" if i % 2 else "dog") / name, mode, seed=i)
    for train in (True, False):
        for augment in (True, False):
            ds, spec = build_dataset("imagefolder", tmp_path, train=train, augment=augment, image_size=24)
            assert spec == DataSpec("imagefolder", 2, 24, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            assert ds.classes == ["cat", "dog"] and len(ds) == 5
            for i in range(len(ds)):
                image, label = ds[i]
                assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and label in (0, 1)
                assert torch.isfinite(image).all()
    assert sorted(ds.targets) == [0, 0, 1, 1, 1]


def test_imagefolder_default_size_and_val_subset(tmp_path):
    _folder(tmp_path, classes=("a", "b", "c"))
    for f in (tmp_path / "val" / "b").iterdir():
        f.unlink()
    (tmp_path / "val" / "b").rmdir()  # val/ may lack a class; labels still follow train/
    ds, spec = build_dataset("imagefolder", str(tmp_path), train=False)
    assert spec.image_size == 224 and spec.num_classes == 3 and ds.targets == [0, 2]
    assert ds[1][0].shape == (3, 224, 224)


def test_imagefolder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"image folder not found: {tmp_path / 'nowhere'}")):
        build_dataset("imagefolder", tmp_path / "nowhere", train=True)
    _image(tmp_path / "train" / "cat" / "0.png")
    with pytest.raises(FileNotFoundError, match=re.escape(f"split not found: {tmp_path / 'val'}")):
        build_dataset("imagefolder", tmp_path, train=False)
    with pytest.raises(ValueError, match="needs a root"):
        build_dataset("imagefolder", None, train=True)


def test_imagefolder_flat_and_empty(tmp_path):
    _image(tmp_path / "train" / "0.png")
    with pytest.raises(ValueError, match=r"train has no class subfolders \(1 image\(s\) directly in it, a flat"):
        build_dataset("imagefolder", tmp_path, train=True)
    (tmp_path / "train" / "0.png").unlink()
    with pytest.raises(ValueError, match=r"no class subfolders \(it is empty\)"):
        build_dataset("imagefolder", tmp_path, train=True)


def test_imagefolder_empty_class_folder(tmp_path):
    _folder(tmp_path)
    (tmp_path / "train" / "bird").mkdir()
    (tmp_path / "train" / "bird" / "notes.txt").write_text("not an image extension: ignored")
    with pytest.raises(ValueError, match=r"train: 1 class folder\(s\) with no image files: bird"):
        build_dataset("imagefolder", tmp_path, train=True)


def test_imagefolder_val_class_not_in_train(tmp_path):
    _folder(tmp_path)
    _image(tmp_path / "val" / "zebra" / "0.png")
    with pytest.raises(ValueError, match=r"val: 1 class folder\(s\) not in .*train: zebra"):
        build_dataset("imagefolder", tmp_path, train=False)


def _bad_files(folder: Path) -> tuple[Path, Path]:
    text = folder / "readme.jpg"
    text.write_text("an image extension, but text")
    _image(folder / "whole.jpg", size=(64, 64))
    truncated = folder / "cut.jpg"
    whole = (folder / "whole.jpg").read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])  # the header survives, the end marker does not
    (folder / "whole.jpg").unlink()
    (folder / "._hidden.jpg").write_bytes(b"macOS resource fork: hidden, never counted")
    return text, truncated


def test_imagefolder_skips_and_counts_bad_files(tmp_path, capsys):
    _folder(tmp_path, per_class=10)
    text, truncated = _bad_files(tmp_path / "train" / "cat")
    ds, _ = build_dataset("imagefolder", tmp_path, train=True)
    # a printed line on stderr, not a Python warning (which a warnings filter could hide)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(r"2 of 22 image files .* unreadable", err)
    assert str(text) in err and str(truncated) in err and "truncated JPEG" in err and len(ds) == 20


def test_imagefolder_full_check_finds_truncation(tmp_path, capsys):
    _folder(tmp_path, per_class=10)
    _, truncated = _bad_files(tmp_path / "train" / "dog")
    ds, _ = build_imagefolder(tmp_path, train=True, augment=False, check=FolderCheck(full=True))
    assert f"{truncated}: not a readable image" in capsys.readouterr().err
    assert len(ds) == 20


def test_imagefolder_too_many_bad_files(tmp_path):
    _folder(tmp_path, per_class=2)
    _bad_files(tmp_path / "train" / "cat")
    with pytest.raises(ValueError, match=r"2 of 6 image files .* unreadable .*more than 10%"):
        build_dataset("imagefolder", tmp_path, train=True)


def test_imagefolder_class_with_only_bad_files(tmp_path, capsys):
    _folder(tmp_path, per_class=10)
    (tmp_path / "train" / "owl").mkdir()
    (tmp_path / "train" / "owl" / "x.png").write_text("not a png")
    with pytest.raises(ValueError, match="with no readable image: owl"):
        build_dataset("imagefolder", tmp_path, train=True)
    assert "x.png" in capsys.readouterr().err


def test_imagefolder_file_spoiled_after_build_names_it(tmp_path):
    _folder(tmp_path)
    ds, _ = build_dataset("imagefolder", tmp_path, train=False)
    path = ds.samples[0][0]
    Path(path).write_bytes(b"gone bad")
    with pytest.raises(ValueError, match=re.escape(f"{path}: cannot decode image")):
        ds[0]
