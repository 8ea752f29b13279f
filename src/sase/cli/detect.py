"""`sase detect`: object detection and instance segmentation with a SASE ResNet-FPN backbone, on COCO-format data.

    sase detect train --train-images DIR --train-ann FILE --val-images DIR --val-ann FILE [--kind mask_rcnn] ...
    sase detect eval RUN_OR_FILE [--images DIR --ann FILE]
    sase detect predict IMAGE... --model RUN_OR_FILE [--score 0.5] [--out DIR]

Faster R-CNN (Ren et al., 2015) and Mask R-CNN (He et al., 2017) are torchvision's; the backbone is a sase
ResNet with any attention module in every block, from a `sase train` checkpoint or safetensors (or a
torchvision ResNet state dict) given to --backbone-weights. --preset coco-1x is the paper's COCO recipe
(Wang et al., 2024, on mmdetection's 1x schedule). Metrics are pycocotools' COCOeval: box AP, and mask AP
for Mask R-CNN. Needs pycocotools (pip install 'sase[detection]').

--resume continues the run in --out with its saved settings: --workers, --device and --checkpoint-every may
change, --epochs may grow, any other flag that differs is refused. Several GPUs: torchrun --nproc_per_node N
-m sase detect train ...; --batch-size stays the global batch (the lr of the 1x schedule follows it).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ..detection.config import KINDS, PRESETS, DetectConfig
from ..train.recipe import resolve_device
from ..utils.config import AMP_MODES
from ..utils.distributed import check_batch
from .args import count, device, positive_int
from .commands import HELP
from .train import default_out

FLAGS = {  # DetectConfig fields with a flag of their own
    "kind": "faster_rcnn | mask_rcnn (default: mask_rcnn)",
    "backbone": "resnet18 | resnet34 | resnet50 | resnet101 (default: resnet50), under an FPN",
    "attention": "none | se | eca | cbam | srm | gct | fca | gsop | simam | sase | paper | PATH/TO/genotype.json | "
                 "per-stage JSON (default: paper)",
    "backbone_weights": "ImageNet weights of the backbone: checkpoint.pt or model.safetensors of sase train, or a "
                        "torchvision ResNet state dict (default: none, the backbone starts at random)",
    "trainable_layers": "backbone stages trained, counted from layer4: 0-5 (default: 3 with --backbone-weights, "
                        "which freezes the stem and layer1, else 5)",
    "train_images": "folder of the training images", "train_ann": "COCO-format annotation JSON of the training images",
    "val_images": "folder of the validation images", "val_ann": "COCO-format annotation JSON of the validation images",
    "min_size": "the shorter side of every image is resized to this (default: 800)",
    "max_size": "... unless the longer side would pass this (default: 1333)",
    "proposals_train": "region proposals per image and level in training (default: 2000)",
    "proposals_test": "region proposals per image and level at inference (default: 1000)",
    "rois_per_image": "proposals sampled per image to train the box head (default: 512)",
    "detections_per_image": "detections kept per image (default: 100)",
    "flip": "probability of a horizontal flip in training (default: 0.5)",
    "epochs": "training epochs (default: 12)",
    "batch_size": "images per step; under torchrun the global batch (default: 2)",
    "seed": "random seed (initialisation, data order, flips, samplers)",
    "lr": "peak learning rate (default: 0.02 x batch-size / 16)",
    "momentum": "SGD momentum (default: 0.9)", "weight_decay": "weight decay (default: 1e-4)",
    "warmup_iters": "iterations of linear warm-up (default: 500)",
    "warmup_factor": "learning rate at the start of the warm-up, as a fraction of the peak (default: 0.001)",
    "lr_steps": "epochs after which the learning rate is multiplied by --gamma (default: 8,11)",
    "gamma": "learning-rate drop at each of --lr-steps (default: 0.1)",
    "grad_clip": "max gradient norm (default: 0, no clipping)",
    "steps_per_epoch": "cap on training steps per epoch", "checkpoint_every": "steps between checkpoints",
    "workers": "data loader worker processes (default: 2)", "device": "auto | cpu | cuda | cuda:N",
    "out": "run folder (default: runs/detect-<date>-<time>)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help=HELP["detect"],
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_train(actions.add_parser("train", help="train a detector on COCO-format data"))
    evaluate = actions.add_parser("eval", help="COCO box (and mask) AP of a trained detector")
    evaluate.add_argument("model", metavar="RUN_OR_FILE",
                          help="a run folder, its detector.safetensors or checkpoint.pt")
    evaluate.add_argument("--images", help="folder of the images (default: the run's --val-images)")
    evaluate.add_argument("--ann", help="COCO-format annotation JSON (default: the run's --val-ann)")
    evaluate.add_argument("--out", help="JSON file for the metrics (default: eval_<annotation file name>.json beside "
                          "the model file)")
    evaluate.add_argument("--batch-size", type=positive_int, default=2, help="images per forward pass (default: 2)")
    evaluate.add_argument("--workers", type=count, default=2, help="data loader worker processes (default: 2)")
    predict = actions.add_parser("predict", help="draw a trained detector's boxes, labels, scores and masks")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict.add_argument("--model", required=True, help="a run folder, its detector.safetensors or checkpoint.pt")
    predict.add_argument("--score", type=float, default=0.5, help="draw detections scoring at least this "
                         "(default: 0.5)")
    predict.add_argument("--out", default="predictions", help="folder of the drawn PNGs and predictions.json "
                         "(default: predictions)")
    for action in (evaluate, predict):
        action.add_argument("--amp", choices=AMP_MODES, help="run under autocast (default: float32)")
        action.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N")
    for action in actions.choices.values():
        action.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback")
    p.set_defaults(command="detect")


def _add_train(train: argparse.ArgumentParser) -> None:
    """The DetectConfig flags, each defaulting to None so that presets and a resumed run can fill them."""
    types = {f.name: str(f.type) for f in fields(DetectConfig)}
    for name, help_text in FLAGS.items():
        kind = int if "int" in types[name] else float if "float" in types[name] else str
        train.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text,
                           choices=KINDS if name == "kind" else None)
    train.add_argument("--frozen-bn", action=argparse.BooleanOptionalAction, default=None, help="FrozenBatchNorm2d "
                       "in the backbone, attention modules included (default: with --backbone-weights)")
    train.add_argument("--keep-empty", action="store_true", default=None, help="train on images without annotations "
                       "too (default: skipped)")
    train.add_argument("--amp", choices=AMP_MODES, default=None, help="mixed precision (default: float32)")
    train.add_argument("--preset", choices=sorted(PRESETS), help="coco-1x: the paper's COCO recipe (Wang et al., "
                       "2024): 12 epochs, batch 16, SGD lr 0.02, momentum 0.9, wd 1e-4, warm-up 500 iterations from "
                       "0.001x, lr x0.1 after epochs 8 and 11, shorter side 800; flags given explicitly still win")
    train.add_argument("--resume", action="store_true", help="resume the run in --out from its checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("pycocotools") is None:  # the detection extra
        raise ValueError("sase detect needs pycocotools: pip install 'sase[detection]' (or pip install pycocotools)")
    return {"train": run_train, "eval": run_eval, "predict": run_predict}[args.action](args)


def config_from_args(args: argparse.Namespace) -> DetectConfig:
    """The settings given by flags; with --resume, the saved run's with them applied or refused."""
    names = {f.name for f in fields(DetectConfig)}
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out, the folder of the run to resume")
        return DetectConfig.resumed(args.out, given, preset=args.preset)
    config = DetectConfig().with_preset(args.preset) if args.preset else DetectConfig()
    return replace(config, **given)


def run_train(args: argparse.Namespace) -> int:
    from ..detection.engine import run_detection
    from ..train.loop import TrainingDiverged

    config = config_from_args(args)
    check_batch(config.batch_size)
    if args.out is None:
        config = replace(config, out=default_out(config, "detect"))
    print(f"training: {config.kind} on {config.backbone}-FPN + {config.attention}, {config.epochs} epochs, batch "
          f"{config.batch_size}, lr {config.peak_lr:g}, {config.amp or 'float32'} -> {config.out}")
    try:
        result = run_detection(config, resume=args.resume, progress=not args.quiet)
    except TrainingDiverged as err:
        print(f"sase detect: {err}", file=sys.stderr)
        return 1
    print(result.table)
    print(f"done: {result.parameters:,} parameters, {result.seconds:.0f} s of training; files in {result.out}/ "
          "(detector.safetensors, checkpoint.pt, metrics.json, history.csv, summary.json, config.json)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json

    from torch.utils.data import DataLoader

    from ..detection.data import CocoDetection, collate
    from ..detection.evaluate import IOU_TYPES, evaluate_coco, format_metrics
    from ..detection.model import load_detector
    from ..detection.model import CHECKPOINT, SAFETENSORS
    from ..train.export import locate

    path = locate(args.model, (SAFETENSORS, CHECKPOINT))
    model, spec = load_detector(path)
    images, ann = _evaluation_data(path, args.images, args.ann)
    data = CocoDetection(images, ann, masks=spec.kind == "mask_rcnn")
    if data.categories != spec.categories:
        raise ValueError(f"{ann}: its categories differ from the {len(spec.categories)} the detector {path} learned")
    device = resolve_device(args.device)
    loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate)
    result = evaluate_coco(model.to(device), loader, data.file.coco(), device, [i for i, _ in spec.categories],
                           IOU_TYPES[spec.kind], args.amp, progress=True)
    out = Path(args.out) if args.out else path.parent / f"eval_{Path(ann).stem}.json"
    report = {"model_file": str(path), "kind": spec.kind, "backbone": spec.backbone, "attention": spec.attention,
              "images_dir": str(images), "annotations": str(ann), "images": result.images, **result.metrics,
              "table": result.table}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(result.table)
    print(f"{spec.kind} ({spec.backbone}-FPN + {spec.attention}) on {result.images} images of {ann}: "
          f"{format_metrics(result.metrics)}; wrote {out}")
    return 0


def _evaluation_data(path: Path, images: str | None, ann: str | None) -> tuple[str, str]:
    """--images and --ann, each defaulting to the validation data of the run whose config.json is beside `path`."""
    saved = path.parent / "config.json"
    config = DetectConfig.load(saved) if saved.is_file() and (images is None or ann is None) else None
    images = images or (config.val_images if config else None)
    ann = ann or (config.val_ann if config else None)
    if images is None or ann is None:
        raise ValueError(f"give --images and --ann: there is no config.json of a detection run beside {path} to "
                         "name its validation data")
    return images, ann


def run_predict(args: argparse.Namespace) -> int:
    from ..detection.draw import PREDICTIONS, predict_images
    from ..detection.model import load_detector

    for image in args.images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {image} does not exist")
    model, spec = load_detector(args.model)
    records = predict_images(model, spec, args.images, args.out, args.score, resolve_device(args.device), args.amp)
    found = sum(len(r["detections"]) for r in records)
    print(f"{found} detections scoring at least {args.score} in {len(records)} images; drawn to {args.out}/ "
          f"(one PNG per image, {PREDICTIONS})")
    return 0
