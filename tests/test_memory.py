"""Inference memory: what a forward keeps alive, counted tensor by tensor (not the allocator's resident set).

A reference cycle in the statistics once kept every block's map and its full-size powers alive until the
garbage collector ran, and the published block's forward peaked at 1.8x plain ResNet-50.
"""
import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sase import create_model
from sase.ops import Features


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by tensors that ops create while the mode is on, freed when their last
    reference goes (the storages of `known` tensors, weights and input, are not counted)."""

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.live or key in self.known or storage.nbytes() == 0:
                continue  # a view of a counted or known storage
            self.live[key] = storage.nbytes()
            self.now += storage.nbytes()
            weakref.finalize(t, self._free, key)
        self.peak = max(self.peak, self.now)
        return out

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)


def peak_live_bytes(attention: str) -> int:
    torch.manual_seed(0)
    model = create_model("resnet50", attention=attention, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    gc.disable()  # only reference counting frees: a cycle would show
    try:
        with torch.inference_mode(), LiveBytes([*model.parameters(), *model.buffers(), x]) as mode:
            model(x)
    finally:
        gc.enable()
    return mode.peak


# one full-size map of layer1 (2 x 256 x 16 x 16 floats) is about a quarter of the plain peak here; SimAM
# holds its squared deviations and, while computing them, the centred map (four maps before: 1.86x)
@pytest.mark.parametrize("attention,bound", [("paper", 1.1), ("se", 1.1), ("simam", 1.4)])
def test_an_attention_forward_keeps_little_more_alive_than_the_plain_network(attention, bound):
    assert peak_live_bytes(attention) <= bound * peak_live_bytes("none")


def test_statistics_are_freed_without_the_garbage_collector():
    gc.disable()
    try:
        features = Features(torch.randn(2, 4, 5, 5))
        features.hw.var, features.c.mean, features.c.pnorm4  # statistics on both axes
        moments = features.hw
        assert moments.var is features.hw.var  # computed once, kept on the Features
        gone = weakref.ref(features)
        del features, moments
        assert gone() is None
    finally:
        gc.enable()
