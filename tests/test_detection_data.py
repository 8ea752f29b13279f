"""COCO-format data for the detectors: targets, masks, flips, crowds, empty images, and one line per bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from detection_data import CATEGORIES, SIZES, write_coco
from sase.cli import main
from sase.detection import CocoDetection, DetectConfig
from sase.detection.coco import decode_mask, rle_runs
from sase.detection.data import hflip
from sase.detection.engine import WarmupSteps

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2


@pytest.fixture
def coco(tmp_path) -> tuple[Path, Path]:
    return write_coco(tmp_path / "train")


def test_targets_boxes_masks_labels_at_each_images_own_size(coco):
    data = CocoDetection(*coco, masks=True, keep_empty=False)
    assert data.categories == tuple((c["id"], c["name"]) for c in CATEGORIES)  # labels 1, 2 for ids 3, 7
    assert len(data) == len(SIZES) - 1  # the image without annotations is skipped
    anns = json.loads(coco[1].read_text())["annotations"]
    for index, (width, height) in enumerate(SIZES[:-1]):
        image, target = data[index]
        assert image.shape == (3, height, width) and image.dtype == torch.float32
        assert 0 <= image.min() <= image.max() <= 1
        mine = [a for a in anns if a["image_id"] == 10 + index and not a["iscrowd"]]  # the crowd region is left out
        assert target["labels"].tolist() == [1 + [c["id"] for c in CATEGORIES].index(a["category_id"]) for a in mine]
        assert target["masks"].shape == (len(mine), height, width) and target["masks"].dtype == torch.uint8
        for box, mask, ann in zip(target["boxes"], target["masks"], mine):
            x, y, w, h = ann["bbox"]
            assert box.tolist() == pytest.approx([x, y, x + w, y + h])
            assert int(mask.sum()) == pytest.approx(ann["area"], rel=0.02)  # polygon and RLE decoded in place
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert x - 1 <= xs.min() and xs.max() <= x + w and y - 1 <= ys.min() and ys.max() <= y + h
    assert int(data[0][1]["image_id"]) == 10


def test_images_without_annotations_kept_on_request(coco):
    data = CocoDetection(*coco, masks=True, keep_empty=True)
    assert len(data) == len(SIZES)
    image, target = data[len(SIZES) - 1]
    width, height = SIZES[-1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, height, width) and image.shape == (3, height, width)


def test_flip_mirrors_image_boxes_and_masks_together(coco):
    image, target = CocoDetection(*coco, masks=True)[2]
    flipped, moved = hflip(image, target)
    assert torch.equal(flipped.flip(-1), image) and torch.equal(moved["masks"].flip(-1), target["masks"])
    for box, mask in zip(moved["boxes"], moved["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box[0] <= xs.min() + 1 and xs.max() <= box[2] and box[1] <= ys.min() + 1 and ys.max() <= box[3]
    always, target_always = CocoDetection(*coco, masks=True, flip=1.0)[2]  # what training draws with probability flip
    assert torch.equal(always, flipped) and torch.equal(target_always["boxes"], moved["boxes"])


def test_compressed_rle_runs_read_as_pycocotools_writes_them():
    rng = np.random.default_rng(0)
    for height, width in ((1, 1), (7, 5), (40, 33)):
        mask = (rng.random((height, width)) < 0.4).astype(np.uint8)
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        runs = rle_runs(counts)
        assert sum(runs) == height * width
        flat = np.concatenate([np.full(r, i % 2, np.uint8) for i, r in enumerate(runs)])
        assert np.array_equal(flat.reshape(width, height).T, mask)  # column-major runs, zeros first
        assert np.array_equal(decode_mask({"size": [height, width], "counts": counts}, height, width), mask)
    assert rle_runs("!!") is None and rle_runs("P") is None  # a character outside the alphabet; a cut-off number


def _drop_image(images: Path, ann: Path) -> None:
    (images / "img1.png").unlink()


def _edit(change):
    def edit(images: Path, ann: Path) -> None:
        data = json.loads(ann.read_text())
        change(data)
        ann.write_text(json.dumps(data))
    return edit


def _set(index: int, key: str, value):
    return _edit(lambda d: d["annotations"][index].__setitem__(key, value))


def _box(index: int, position: int, value: float):
    return _edit(lambda d: d["annotations"][index]["bbox"].__setitem__(position, value))


BAD = {  # case: (what is done to a sound dataset, what the one line says)
    "missing annotation file": (lambda images, ann: ann.unlink(), "annotations.json does not exist"),
    "not JSON": (lambda images, ann: ann.write_text("{images"), "not valid JSON"),
    "missing image file": (_drop_image, "img1.png: no such image (image 11 of"),
    "annotation of an unlisted image": (_set(3, "image_id", 99), "annotation 103 refers to image_id 99, which is not "
                                                                "in the images list"),
    "unknown category": (_set(0, "category_id", 5),
                         "annotation 100 (image img0.png) has category_id 5, which is not in the categories list"),
    "zero width": (_box(0, 2, 0), "annotation 100 (image img0.png): degenerate box"),
    "zero height": (_box(1, 3, 0.0), "annotation 101 (image img0.png): degenerate box"),
    "box outside the image": (_box(0, 0, 500), "lies outside its 96x64 image"),
    "image of another size": (_edit(lambda d: d["images"][4].update(width=113)),
                              "img4.png: 112x72 pixels, but"),
    "unreadable image": (lambda images, ann: (images / "img2.png").write_bytes(b"not a png"),
                         "img2.png: not a readable image"),
    "polygon of two points": (_set(0, "segmentation", [[1, 2, 3, 4]]), "annotation 100 (image img0.png): broken mask: "
                                                                       "a polygon"),
    "polygon of odd length": (_set(3, "segmentation", [[1, 2, 3, 4, 5, 6, 7]]), "annotation 103 (image img1.png): "
                                                                               "broken mask"),
    "RLE of another size": (_set(1, "segmentation", {"size": [64, 95], "counts": "ab"}), "broken mask: RLE size"),
    "RLE runs short of the image": (_set(2, "segmentation", {"size": [64, 96], "counts": [5, 10]}),
                                    "broken mask: RLE runs do not cover the 64x96 image"),
    "garbled RLE string": (_set(1, "segmentation", {"size": [64, 96], "counts": "!!#"}), "broken mask: RLE runs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_annotations_end_in_one_line_naming_them(tmp_path, capsys, case):
    images, ann = write_coco(tmp_path / "data")
    spoil, message = BAD[case]
    spoil(images, ann)
    paths = ["--train-images", str(images), "--train-ann", str(ann), "--val-images", str(images), "--val-ann", str(ann)]
    small = ["--backbone", "resnet18", "--min-size", "64", "--max-size", "128", "--workers", "0", "--epochs", "1",
             "--steps-per-epoch", "1"]  # should a check miss, a short run, not ResNet-50 at 800 pixels
    assert main(["detect", "train", *paths, *small, "--kind", "mask_rcnn", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert not (tmp_path / "run").exists()  # nothing written


def test_masks_are_checked_only_for_mask_rcnn(coco):
    images, ann = coco
    _set(0, "segmentation", [[1, 2]])(images, ann)
    CocoDetection(images, ann, masks=False)  # Faster R-CNN never reads the masks
    with pytest.raises(ValueError, match="broken mask"):
        CocoDetection(images, ann, masks=True)


def test_schedule_of_the_1x_recipe():
    config = DetectConfig().with_preset("coco-1x")
    assert (config.epochs, config.batch_size, config.peak_lr, config.momentum, config.weight_decay) == \
        (12, 16, 0.02, 0.9, 1e-4)
    assert DetectConfig(batch_size=2).peak_lr == pytest.approx(0.0025)  # linear scaling with the batch
    assert DetectConfig(batch_size=2, lr=0.1).peak_lr == 0.1
    steps = 100  # per epoch
    schedule = WarmupSteps(500, 0.001, tuple(e * steps for e in config.milestones()), 0.1)
    assert schedule(0) == pytest.approx(0.001) and schedule(250) == pytest.approx(0.5005)
    assert schedule(499) < 1 and schedule(500) == 1.0 and schedule(799) == 1.0
    assert schedule(800) == pytest.approx(0.1) and schedule(1099) == pytest.approx(0.1)
    assert schedule(1100) == pytest.approx(0.01) and schedule(1199) == pytest.approx(0.01)
    for bad, match in ((dict(lr_steps="11,8"), "lr_steps"), (dict(lr_steps="a"), "lr_steps"),
                       (dict(min_size=800, max_size=600), "max_size"), (dict(kind="yolo"), "unknown kind"),
                       (dict(backbone="resnet20"), "unknown backbone"), (dict(trainable_layers=6), "trainable_layers")):
        with pytest.raises(ValueError, match=match):
            DetectConfig(**bad)
