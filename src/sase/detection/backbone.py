"""The detectors' backbone: a sase ResNet with any attention, classification weights loaded, frozen as
torchvision and mmdetection freeze it, under a feature pyramid (Lin et al., "Feature Pyramid Networks for Object
Detection", CVPR 2017).

Frozen BatchNorm: with classification weights every BatchNorm2d of the ResNet becomes a FrozenBatchNorm2d
(statistics and affine fixed, as torchvision's detectors do), the attention modules' own BatchNorms included
(the SASE block's merge BatchNorm, SRM's, GSoP's): detection batches of one or two images per GPU give
batch statistics that are noise, and a BatchNorm over (B, C, 1, 1) descriptors cannot train on one image.
The attention modules' convolutions and fully connected layers in the trained stages do train.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ..attention import AttentionSpec
from ..models import create_model
from ..models.resnet import WIDTHS
from ..utils.checkpoint import load_checkpoint

STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")  # trained first to last as trainable_layers grows
FPN_CHANNELS = 256
PREFIXES = ("module.", "backbone.body.")  # a DDP wrapper's; a torchvision or sase detector's backbone


@dataclass(frozen=True)
class WeightsReport:
    """What loading classification weights into a backbone did, tensor by tensor."""

    path: str
    loaded: tuple[str, ...]  # backbone tensors taken from the file
    missing: tuple[str, ...]  # backbone tensors the file lacks (they keep their initialisation)
    mismatched: tuple[str, ...]  # in both, with other shapes (not loaded)
    unused: tuple[str, ...]  # in the file, not in the backbone (the classifier `fc.*` among them)

    def summary(self) -> str:
        """One line: how many tensors were loaded, and which were not."""
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        parts = [f"backbone weights {self.path}: {len(self.loaded)} of {total} backbone tensors loaded"]
        for what, names in (("not in the file", self.missing), ("of another shape there", self.mismatched),
                            ("unused from the file", self.unused)):
            if names:
                parts.append(f"{what}: {_few(names)}")
        return "; ".join(parts)


def _few(names: tuple[str, ...], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def read_state(path: str | os.PathLike) -> tuple[dict[str, Tensor], str | None]:
    """The tensors of a weights file (safetensors, a sase checkpoint, or a torchvision state dict) and the
    sase model they belong to, when the file says."""
    path, model = Path(path), None
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path} do not exist")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                spec = json.loads((f.metadata() or {}).get("sase.model_spec", "{}"))
        except (SafetensorError, OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
        model = spec.get("model") if isinstance(spec, dict) else None
    else:
        state = load_checkpoint(path)  # weights_only=True
        if isinstance(state.get("model_spec"), dict):
            model = state["model_spec"].get("model")
        for key in ("model", "state_dict"):  # a sase or torchvision-reference checkpoint wraps its weights
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    tensors = {_unprefixed(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{path}: holds no tensors; give a checkpoint.pt or model.safetensors of sase train, or "
                         "a torchvision ResNet state dict")
    return tensors, model


def _unprefixed(key: str) -> str:
    for prefix in PREFIXES:
        key = key[len(prefix):] if key.startswith(prefix) else key
    return key


def load_backbone_weights(resnet: nn.Module, name: str, path: str | os.PathLike) -> WeightsReport:
    """Load what fits of a classification weights file into `resnet`, ResNet `name` (by tensor name and shape);
    a ValueError naming the file when it holds another sase model, or when nothing fits."""
    state, model = read_state(path)
    if model is not None and model != name:
        raise ValueError(f"{path} holds the weights of a {model}; the detector's backbone is {name} (--backbone)")
    own = resnet.state_dict()
    backbone = {k: v for k, v in own.items() if not k.startswith("fc.")}  # the detector drops the classifier
    loaded = {k: v for k, v in state.items() if k in backbone and v.shape == backbone[k].shape}
    if not loaded:
        raise ValueError(f"{path}: none of its {len(state)} tensors fits this backbone (its names begin "
                         f"{_few(tuple(state), 3)}); give the weights of the same ResNet")
    resnet.load_state_dict(loaded, strict=False)
    return WeightsReport(
        str(path), tuple(loaded), tuple(k for k in backbone if k not in state),
        tuple(k for k in backbone if k in state and k not in loaded), tuple(k for k in state if k not in backbone))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d under `module` replaced by a FrozenBatchNorm2d with its statistics and affine."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            if child.affine:
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
            if child.track_running_stats:
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def freeze_stages(resnet: nn.Module, trainable_layers: int) -> None:
    """Parameters outside the last `trainable_layers` stages stop training (torchvision's rule: 5 trains all)."""
    if not 0 <= trainable_layers <= len(STAGES):
        raise ValueError(f"trainable_layers must be in [0, {len(STAGES)}], got {trainable_layers}")
    trained = list(STAGES[:trainable_layers]) + (["bn1"] if trainable_layers == len(STAGES) else [])
    for name, parameter in resnet.named_parameters():
        if not any(name.startswith(stage) for stage in trained):
            parameter.requires_grad_(False)


def build_backbone(name: str, attention: AttentionSpec, trainable_layers: int, frozen_bn: bool,
                   weights: str | os.PathLike | None = None) -> tuple[BackboneWithFPN, WeightsReport | None]:
    """ResNet `name` with `attention`, `weights` loaded, frozen as asked, under an FPN of layer1..layer4
    (strides 4 to 32, plus a max-pooled level at 64); the load report, when weights were given."""
    resnet = create_model(name, attention=attention)
    report = None if weights is None else load_backbone_weights(resnet, name, weights)
    if frozen_bn:
        freeze_batchnorm(resnet)
    freeze_stages(resnet, trainable_layers)
    expansion = resnet.layer1[0].expansion  # 1 (BasicBlock) or 4 (Bottleneck)
    return BackboneWithFPN(resnet, {f"layer{i + 1}": str(i) for i in range(len(WIDTHS))},
                           [w * expansion for w in WIDTHS], FPN_CHANNELS, extra_blocks=LastLevelMaxPool()), report


__all__ = ["WeightsReport", "build_backbone", "freeze_batchnorm", "freeze_stages", "load_backbone_weights",
           "read_state"]
