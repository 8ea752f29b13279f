"""The subcommands of `sase`, by name, with their one-line help: the only list of them.

Kept apart from the commands' modules, which import torch (seconds): `sase --help` lists the commands from
here without importing any of them, and `sase COMMAND ...` imports that command's module alone.
"""
from __future__ import annotations

HELP: dict[str, str] = {  # in the order `sase --help` lists them; each is the module sase.cli.<name>
    "search": "search an attention block (DARTS, Liu et al., ICLR 2019)",
    "train": "train a ResNet with an attention module",
    "eval": "evaluate a trained model (checkpoint.pt, model.safetensors or run folder)",
    "compare": "train attention modules under one recipe over seeds and compare them",
    "pipeline": "search a block, then compare it with paper, se, cbam, eca, none and random blocks",
    "demo": "build the published SASE block (Wang et al., 2024) in a ResNet and run a forward pass",
    "detect": "train, evaluate and run Faster / Mask R-CNN with an attention backbone",
    "export": "export a model to ONNX, TorchScript or torch.export and check it",
    "bench": "parameters, FLOPs, latency, training step and memory of each attention",
    "maps": "draw the spatial attention of every SASE or CBAM block of a trained model on test images",
}

_RESUME = ("; the run folder keeps its last checkpoint (written every --checkpoint-every steps and at each epoch's "
           "end): continue with --resume --out FOLDER")
_RERUN = "; finished cells are kept: the same command again trains only the others"
AFTER_INTERRUPT: dict[str, str] = {  # what a command's work left behind when Ctrl-C stopped it, and how to go on
    "search": _RESUME, "train": _RESUME, "detect": _RESUME, "compare": _RERUN,
    "pipeline": "; a finished search and finished cells are kept: the same command again goes on from there",
}
