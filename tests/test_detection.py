"""Faster R-CNN and Mask R-CNN with SASE backbones end to end on a tiny COCO-format dataset: training, COCO metrics,
backbone weights, freezing, resume, `sase detect train|eval|predict`."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from detection_data import SIZES, write_coco
from helpers import interrupt_after, write_folder
from sase.cli import main
from sase.detection import (DetectConfig, DetectionTrainer, DetectorSpec, create_detector, load_detector,
                            run_detection)
from sase.detection.evaluate import STATS
from sase.train.export import save_safetensors
from sase.utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2

# small images, few proposals and detections, ResNet-18: seconds per run on a CPU core
TINY = dict(backbone="resnet18", attention="paper", min_size=64, max_size=128, proposals_train=100, proposals_test=100,
            rois_per_image=32, detections_per_image=10, batch_size=2, epochs=1, steps_per_epoch=2, warmup_iters=2,
            workers=0, checkpoint_every=1)
CLI_TINY = [part for k, v in TINY.items() for part in (f"--{k.replace('_', '-')}", str(v))] + ["--quiet"]
TIMING = ("seconds", "images_per_s")
VAL_SIZES = (SIZES[0], SIZES[1], SIZES[-1])  # landscape, portrait, and one image without annotations


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("coco")
    (train_images, train_ann) = write_coco(root / "train")
    (val_images, val_ann) = write_coco(root / "val", seed=1, sizes=VAL_SIZES)
    return dict(train_images=str(train_images), train_ann=str(train_ann), val_images=str(val_images),
                val_ann=str(val_ann))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """model.safetensors of a ResNet-18 + SASE classifier that `sase train` wrote (one step)."""
    root = tmp_path_factory.mktemp("classifier")
    write_folder(root / "data", classes=("a", "b"), per_class=2)
    assert main(["train", "--dataset", "imagefolder", "--data", str(root / "data"), "--model", "resnet18",
                 "--attention", "paper", "--epochs", "1", "--batch-size", "4", "--image-size", "32",
                 "--quiet", "--out", str(root / "run")]) == 0
    return root / "run" / "model.safetensors"


def paths(data: dict[str, str]) -> list[str]:
    return [part for k, v in data.items() for part in (f"--{k.replace('_', '-')}", v)]


def check_metrics(metrics: dict, kinds: tuple[str, ...]) -> None:
    assert tuple(metrics) == kinds
    for kind in kinds:
        assert list(metrics[kind]) == list(STATS)
        assert all(v is None or 0 <= v <= 1 for v in metrics[kind].values()), metrics[kind]
        assert metrics[kind]["APl"] is None and metrics[kind]["AP"] is not None  # no large object; small ones


@pytest.mark.parametrize("kind", ["faster_rcnn", "mask_rcnn"])
def test_cli_train_then_eval_gives_coco_metrics(tmp_path, capsys, data, kind):
    out = tmp_path / "run"
    assert main(["detect", "train", "--kind", kind, *CLI_TINY, *paths(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in printed  # COCOeval's table
    kinds = ("bbox", "segm") if kind == "mask_rcnn" else ("bbox",)
    for name in ("config.json", "history.csv", "checkpoint.pt", "detector.safetensors", "metrics.json", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tensorboard").iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    check_metrics({k: metrics[k] for k in kinds}, kinds)
    with (out / "history.csv").open() as f:
        row, = list(csv.DictReader(f))
    assert float(row["train_loss"]) > 0 and float(row["lr"]) > 0 and float(row["images_per_s"]) > 0
    assert ("train_loss_mask" in row) == (kind == "mask_rcnn") and f"val_{kinds[-1]}_AP50" in row

    assert main(["detect", "eval", str(out)]) == 0  # the validation data come from the run's config.json
    report = json.loads((out / "eval_annotations.json").read_text())
    assert report["images"] == len(VAL_SIZES) and report["kind"] == kind
    for k in kinds:  # the same weights on the same images: the run's own last evaluation
        assert report[k] == pytest.approx(metrics[k])
    assert "segm AP" in capsys.readouterr().out or kind == "faster_rcnn"


def test_ground_truth_as_predictions_scores_ap_one_and_a_shift_less(data):
    from sase.detection import CocoDetection
    from sase.detection.evaluate import coco_metrics, coco_results

    images = CocoDetection(data["val_images"], data["val_ann"], masks=True)
    ids = [i for i, _ in images.categories]

    def metrics(shift: float) -> dict:
        results: dict[str, list] = {"bbox": [], "segm": []}
        for image, target in (images[i] for i in range(len(images))):
            output = {"boxes": target["boxes"] + shift, "labels": target["labels"],
                      "scores": torch.ones(len(target["labels"])), "masks": target["masks"][:, None].float()}
            for kind, entries in coco_results(output, int(target["image_id"]), ids, ("bbox", "segm")).items():
                results[kind] += entries
        return coco_metrics(images.file.coco(), results)[0]

    exact = metrics(0.0)
    for kind in ("bbox", "segm"):
        assert exact[kind]["AP"] == pytest.approx(1.0) and exact[kind]["AR100"] == pytest.approx(1.0), kind
        assert exact[kind]["APl"] is None  # no large object in the data: no number, not a score
    shifted = metrics(4.0)["bbox"]
    assert 0 < shifted["AP"] < 1 and shifted["AP50"] >= shifted["AP75"]


def test_predict_draws_boxes_labels_and_masks_at_each_images_size(tmp_path, capsys, data):
    spec = DetectorSpec.create(DetectConfig(**TINY, kind="mask_rcnn"), ((3, "square"), (7, "disc")))
    torch.manual_seed(0)
    save_safetensors(spec.build(), spec, tmp_path / "detector.safetensors")
    images = [str(Path(data["val_images"]) / f"img{i}.png") for i in (0, 1)]  # landscape and portrait
    out = tmp_path / "drawn"
    assert main(["detect", "predict", *images, "--model", str(tmp_path / "detector.safetensors"), "--score", "0",
                 "--out", str(out)]) == 0
    assert "detections scoring at least 0.0 in 2 images" in capsys.readouterr().out
    records = json.loads((out / "predictions.json").read_text())
    for image, record, (width, height) in zip(images, records, VAL_SIZES):
        drawn = np.asarray(Image.open(out / Path(image).with_suffix(".png").name))
        source = np.asarray(Image.open(image))
        assert drawn.shape == source.shape == (height, width, 3)
        assert record["detections"] and (drawn != source).any(axis=2).mean() > 0.05  # boxes and masks drawn
        for d in record["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height and d["label"] in ("square", "disc")
    assert main(["detect", "predict", images[0], "--model", str(tmp_path / "nothing")]) == 2


def test_backbone_loaded_from_sase_train_safetensors(tmp_path, capsys, data, classifier):
    config = DetectConfig(**TINY, **data, kind="faster_rcnn", backbone_weights=str(classifier), out=str(tmp_path))
    trainer = DetectionTrainer(config, progress=False)  # reports the weights as the run starts
    report = json.loads((tmp_path / "backbone_weights.json").read_text())
    assert sorted(report["unused"]) == ["fc.bias", "fc.weight"] and not report["missing"] and not report["mismatched"]
    with safe_open(str(classifier), framework="pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    assert len(report["loaded"]) == len(saved) - 2
    assert f"{len(saved) - 2} of {len(saved) - 2} backbone tensors loaded" in capsys.readouterr().out
    body = trainer.net.backbone.body.state_dict()
    for key in ("conv1.weight", "layer3.1.attn.merge.bn.running_var", "layer4.0.attn.edges.1.fc1.weight"):
        assert key in body, key
        assert torch.equal(body[key], saved[key]), key
    # frozen BatchNorm (the attention's too), the stem and layer1 frozen, layer2..4 trained
    assert isinstance(trainer.net.backbone.body.layer3[1].attn.merge.bn, FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trainer.net.backbone.body.modules())
    trained = {n.split(".")[0] for n, p in trainer.net.backbone.body.named_parameters() if p.requires_grad}
    assert trained == {"layer2", "layer3", "layer4"}

    with pytest.raises(ValueError, match="holds the weights of a resnet18; the detector's backbone is resnet50"):
        create_detector("faster_rcnn", "resnet50", backbone_weights=classifier)
    with pytest.raises(ValueError, match="not a sase detector .* a classifier's weights go to --backbone-weights"):
        load_detector(classifier)
    torch.save({"head.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="none of its 1 tensors fits this backbone"):
        create_detector("faster_rcnn", "resnet18", backbone_weights=tmp_path / "other.pth")


def test_torchvision_resnet_weights_give_torchvisions_features(tmp_path):
    torch.manual_seed(0)
    reference = resnet18()
    for m in reference.modules():  # statistics other than 0 and 1, so that freezing them shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    ours = create_detector("faster_rcnn", "resnet18", attention="none", num_classes=3,
                           backbone_weights=tmp_path / "resnet18.pth").backbone
    theirs = _resnet_fpn_extractor(resnet18(norm_layer=FrozenBatchNorm2d), 3)
    theirs.body.load_state_dict({k: v for k, v in reference.state_dict().items() if "num_batches" not in k},
                                strict=False)
    theirs.fpn.load_state_dict(ours.fpn.state_dict())
    x = torch.rand(1, 3, 96, 64)
    for (name, a), b in zip(ours(x).items(), theirs(x).values()):
        assert torch.allclose(a, b, atol=1e-5), name
    report = create_detector("faster_rcnn", "resnet18", attention="paper", num_classes=3,
                             backbone_weights=tmp_path / "resnet18.pth").backbone_report
    assert report.missing and all(".attn." in k for k in report.missing)  # the block's own tensors start afresh
    assert "not in the file: layer1.0.attn" in report.summary()

    scratch = create_detector("mask_rcnn", "resnet50", attention="paper", num_classes=3)  # no weights: all trains
    assert scratch.backbone_report is None
    assert isinstance(scratch.backbone.body.layer1[0].attn.merge.bn, nn.BatchNorm2d)
    assert all(p.requires_grad for p in scratch.parameters())
    frozen = create_detector("faster_rcnn", "resnet18", num_classes=3, trainable_layers=0, frozen_bn=True)
    assert not any(p.requires_grad for p in frozen.backbone.body.parameters())
    assert all(p.requires_grad for p in frozen.backbone.fpn.parameters())


def test_an_image_without_annotations_trains(data):
    from sase.detection import CocoDetection

    images = CocoDetection(data["train_images"], data["train_ann"], masks=True)
    detector = DetectorSpec.create(DetectConfig(**TINY), images.categories).build().train()
    image, target = images[len(images) - 1]
    assert len(target["boxes"]) == 0
    losses = detector([image, images[0][0]], [target, images[0][1]])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"] > 0


def test_torchrun_two_processes_train_one_run_and_gather_the_evaluation(tmp_path, data):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "SASE_DIST_TIMEOUT": "120"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "sase", "detect", "train", "--kind", "faster_rcnn", *CLI_TINY, "--steps-per-epoch",
                           "1", "--device", "cpu", *paths(data), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all") == 1  # rank 0 prints
    shared = json.loads((out / "metrics.json").read_text())
    assert shared["images"] == len(VAL_SIZES)  # each process predicted its shard; rank 0 scored them all
    # one process, one image per forward as each of the two had: the same numbers
    assert main(["detect", "eval", str(out), "--batch-size", "1", "--workers", "0",
                 "--out", str(tmp_path / "one.json")]) == 0
    alone = json.loads((tmp_path / "one.json").read_text())
    assert alone["bbox"] == pytest.approx(shared["bbox"])


def assert_same_run(cut: Path, whole: Path) -> None:
    a, b = load_checkpoint(cut / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    for key in ("epoch", "step", "detector_spec"):
        assert a[key] == b[key], key
    for key in ("model", "optimizer"):
        flat_a, flat_b = _tensors(a[key]), _tensors(b[key])
        assert flat_a.keys() == flat_b.keys()
        for name in flat_a:
            assert torch.equal(flat_a[name], flat_b[name]), (key, name)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    rows = [[{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader((p / "history.csv").open())]
            for p in (cut, whole)]
    assert rows[0] == rows[1] and len(rows[0]) == 2


def _tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else []
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}.{key}").items()}


def test_interrupted_run_resumes_to_the_same_end(tmp_path, capsys, data):
    tiny = {**TINY, "epochs": 2, "batch_size": 1}
    config = DetectConfig(**tiny, **data, kind="faster_rcnn", out=str(tmp_path / "whole"))
    run_detection(config, progress=False)
    cut = DetectionTrainer(DetectConfig(**{**asdict(config), "out": str(tmp_path / "cut")}), progress=False)
    interrupt_after(cut, 3)  # in epoch 2, after the checkpoint of its first step
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == (1, 1) and not (tmp_path / "cut" / "detector.safetensors").exists()
    assert main(["detect", "train", "--resume", "--out", str(tmp_path / "cut"), "--quiet"]) == 0
    assert_same_run(tmp_path / "cut", tmp_path / "whole")
    model, spec = load_detector(tmp_path / "cut")
    assert spec.kind == "faster_rcnn" and spec.categories == ((3, "square"), (7, "disc"))
    capsys.readouterr()
    assert main(["detect", "train", "--resume", "--out", str(tmp_path / "cut"), "--min-size", "80"]) == 2
    assert "--min-size 80" in capsys.readouterr().err
