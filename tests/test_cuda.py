"""Search and training on a CUDA device, in float32, bf16 and fp16, and checkpoints moved between devices.

Skipped on a machine without CUDA (CI has none); run on a GPU machine with `pytest tests/test_cuda.py`.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sase.cli import main
from sase.search import Architect, Supernet
from sase.utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SEARCH = ["search", "--epochs", "1", "--batch-size", "16", "--steps-per-epoch", "4", "--image-size", "16", "--quiet"]
TRAIN = ["train", "--epochs", "1", "--batch-size", "32", "--steps-per-epoch", "4", "--image-size", "16", "--quiet",
         "--attention", "sase"]


def history(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "history.csv").open()))


def floating(state: dict) -> list[torch.Tensor]:
    return [t for t in state.values() if torch.is_tensor(t) and t.is_floating_point()]


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
@pytest.mark.parametrize("order", ["1", "2"])
def test_search_on_cuda(tmp_path, amp, order):
    out = tmp_path / "s"
    flags = [] if amp is None else ["--amp", amp]
    assert main([*SEARCH, "--order", order, "--device", "cuda", *flags, "--out", str(out)]) == 0
    state = load_checkpoint(out / "checkpoint.pt")  # read onto the CPU whatever device wrote it
    alpha = state["model"]["alpha"]
    assert alpha.dtype == torch.float32 and torch.isfinite(alpha).all()
    assert alpha.std() > 1e-3  # α moved from its 1e-3-scale start
    assert all(torch.isfinite(t).all() for t in floating(state["model"]))
    assert json.loads((out / "verdict.json").read_text())["edges"]


def test_search_checkpoint_moves_between_cuda_and_cpu(tmp_path):
    out = tmp_path / "s"
    assert main([*SEARCH, "--device", "cuda", "--out", str(out)]) == 0
    assert main(["search", "--out", str(out), "--resume", "--epochs", "2", "--device", "cpu", "--quiet"]) == 0
    assert main(["search", "--out", str(out), "--resume", "--epochs", "3", "--device", "cuda", "--quiet"]) == 0
    assert [r["epoch"] for r in history(out)] == ["1", "2", "3"]


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_train_on_cuda_and_resume_on_cpu(tmp_path, amp):
    out = tmp_path / "t"
    flags = [] if amp is None else ["--amp", amp]
    assert main([*TRAIN, "--device", "cuda", *flags, "--out", str(out)]) == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--device", "cpu", "--quiet"]) == 0
    rows = history(out)
    assert len(rows) == 2 and all(float(r["train_loss"]) > 0 for r in rows)
    assert all(torch.isfinite(t).all() for t in floating(load_checkpoint(out / "checkpoint.pt")["model"]))


@pytest.mark.parametrize("order", [1, 2, "exact"])
def test_alpha_gradient_on_cuda_matches_cpu(order):
    """The same float64 supernet, batches and hypergradient on both devices."""
    torch.manual_seed(0)
    model = Supernet("resnet20", num_classes=3).double()
    with torch.no_grad():
        model.alpha.normal_(0, 0.5)
    g = torch.Generator().manual_seed(1)
    batch = lambda: (torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g))
    train, val = batch(), batch()
    grads = []
    for device in ("cpu", "cuda"):
        m = Supernet("resnet20", num_classes=3).double().to(device)
        m.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(m.weight_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        on = lambda b: (b[0].to(device), b[1].to(device))
        grad, _ = Architect(m, opt, order=order).alpha_gradient(on(train), on(val))
        grads.append(grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-9)


def test_weight_step_keeps_the_graph_on_the_device():
    model = Supernet("resnet20", num_classes=3).cuda()
    x, y = torch.randn(4, 3, 8, 8, device="cuda"), torch.randint(0, 3, (4,), device="cuda")
    F.cross_entropy(model(x), y).backward()
    assert model.alpha.grad.device.type == "cuda"
    assert all(p.grad is None or p.grad.device.type == "cuda" for p in model.parameters())
