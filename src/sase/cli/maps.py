"""`sase maps`: draw where each attention block of a trained network looks, on images of its test split.

    sase maps runs/train                                  # 8 test images, every block -> runs/train/attention_maps.png
    sase maps runs/pipeline/cells/found-seed0 --images 4 --seed 3

Each row is one image (its label, the prediction and its probability above it), then the spatial attention
of every block upsampled over it, on one colour scale from 0 to 1. A SASE block multiplies its input by
1 + (s2 + s5) / 2 (Wang et al., 2024), s5 its spatial attention; a CBAM block (Woo et al., ECCV 2018) by its
channel attention, then its spatial attention. Bright regions are amplified relative to dark ones; a block
whose map is one flat colour does not discriminate positions. Networks with SASE blocks (the published
genotype or a searched one) or CBAM blocks have such a map; SE, ECA and the rest attend over channels.
The images are drawn at random (--seed) from the test / validation split of the dataset the model was
trained on, unless --dataset names another.

On cluttered-digits, where the labelled digit's place is known, it also measures over the whole test split
whether each block attends to the digit: the mean spatial attention inside the digit's box, elsewhere, and
their ratio (above 1: the block amplifies the digit against the clutter), printed and written to a JSON
file beside the figure.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..data.cluttered import generate_cluttered
from ..train.recipe import resolve_device
from ..visualize import attention_blocks, attention_maps, digit_contrast, displayable, plot_attention_maps
from .args import device, positive_int
from .commands import HELP
from .eval import model_and_split

IMAGES = 8
MAX_IMAGES = 64  # one row of the figure per image


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("maps", help=HELP["maps"],
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="CHECKPOINT_OR_SAFETENSORS", help="checkpoint.pt, model.safetensors, or a run "
                   "folder holding one")
    p.add_argument("--images", type=positive_int, default=IMAGES, help=f"images to draw, one row each, at most "
                   f"{MAX_IMAGES} (default: {IMAGES})")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw of the images (default: 0)")
    p.add_argument("--dataset", help="dataset (default: the one the model was trained on)")
    p.add_argument("--data", help="dataset root (default: the training run's, when its config.json is beside the "
                   "model file)")
    p.add_argument("--image-size", type=positive_int, help="input size (default: the training size)")
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", help="PNG file (default: attention_maps.png beside the model file)")
    p.set_defaults(command="maps")


def run(args: argparse.Namespace) -> int:
    if args.images > MAX_IMAGES:
        raise ValueError(f"--images {args.images}: at most {MAX_IMAGES} (the figure draws one row per image)")
    if args.out and Path(args.out).suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: the figure is written as PNG; give a path ending in .png")
    loaded = model_and_split(args)
    model, spec, split, dataset = loaded.model, loaded.spec, loaded.split, loaded.dataset
    attention_blocks(model)  # a network without SASE or CBAM blocks: one line, nothing written
    out = Path(args.out) if args.out else loaded.path.parent / "attention_maps.png"
    count = min(args.images, len(split))
    picked = torch.randperm(len(split), generator=torch.Generator().manual_seed(args.seed))[:count].tolist()
    images = torch.stack([split[i][0] for i in picked])
    labels = [int(split[i][1]) for i in picked]
    device_ = resolve_device(args.device)
    maps, logits = attention_maps(model.to(device_), images.to(device_))
    probs = torch.softmax(logits.float(), -1).cpu()
    titles = [f"label {y}, predicted {int(p.argmax())} ({float(p.max()):.2f})" for y, p in zip(labels, probs)]
    plot_attention_maps(displayable(images, loaded.data_spec.mean, loaded.data_spec.std), maps, titles, out)
    print(f"{spec.model} + {spec.attention}: spatial attention of {len(maps)} blocks on {count} {dataset} test "
          f"images (seed {args.seed}); wrote {out}")
    if dataset == "cluttered-digits":
        report = out.with_suffix(".json")
        write_contrast(model, split, loaded.image_size, report)
    return 0


def write_contrast(model: torch.nn.Module, split, image_size: int, path: Path) -> None:
    """Attention on the digit against elsewhere, per block, over the whole cluttered-digits test split."""
    truth = generate_cluttered(False, image_size)  # the split's placements (the test split is not augmented)
    images = torch.stack([split[i][0] for i in range(len(split))])
    contrasts = digit_contrast(model, images, torch.from_numpy(truth.corners.copy()), truth.digit_size)
    print(f"mean spatial attention on the labelled digit's {truth.digit_size}x{truth.digit_size} box vs elsewhere, "
          f"over all {len(split)} test images:")
    for c in contrasts:
        print(f"  {c.name.removesuffix('.attn'):10s} digit {c.digit:.3f}  elsewhere {c.elsewhere:.3f}  "
              f"ratio {c.ratio:.2f}")
    rows = [{"block": c.name, "digit": c.digit, "elsewhere": c.elsewhere, "ratio": c.ratio} for c in contrasts]
    path.write_text(json.dumps({"images": len(split), "digit_box": truth.digit_size, "blocks": rows}, indent=2) + "\n")
    print(f"wrote {path}")
