"""`sase maps` and `sase.visualize`: the spatial attention of every SASE and CBAM block, captured and drawn."""
from __future__ import annotations

import json

import matplotlib.image
import pytest
import torch
from timm.layers.cbam import CbamModule

from sase import create_model
from sase.cell import Cell
from sase.cli import main
from sase.visualize import attention_maps, box_masks, digit_contrast

TINY = ["--epochs", "1", "--batch-size", "16", "--steps-per-epoch", "2", "--image-size", "8", "--quiet"]


def test_the_maps_are_what_each_block_multiplies_its_input_by():
    """Y = X (1 + (s2 + s5) / 2) (Wang et al., 2024), checked with the block's own input and output."""
    torch.manual_seed(0)
    model = create_model("resnet20", attention="paper", num_classes=10).train()
    for m in model.modules():  # the residual branches start at zero (zero-initialised last BatchNorm): open them
        if isinstance(m, torch.nn.BatchNorm2d) and m.affine:
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, std=0.1)
    x = torch.randn(3, 3, 12, 10)
    seen: dict[str, tuple] = {}
    cells = [(name, m) for name, m in model.named_modules() if isinstance(m, Cell)]
    with torch.no_grad():  # and the blocks' own start (a flat spatial map at initialisation): random weights
        for _, cell in cells:
            for p in cell.parameters():
                p.normal_(std=0.5)
    for name, cell in cells:
        cell.register_forward_hook(lambda m, inputs, out, name=name: seen.__setitem__(name, (inputs[0], out)))
    maps, logits = attention_maps(model, x)
    assert [m.name for m in maps] == [name for name, _ in cells] and maps[0].name == "layer1.0.attn"
    assert {m.kind for m in maps} == {"sase"}
    for block in maps:
        x_in, y = seen[block.name]
        b, c, h, w = x_in.shape
        assert block.channel.shape == (b, c) and block.spatial.shape == (b, 1, h, w)
        assert 0 < float(block.spatial.min()) and float(block.spatial.max()) < 1  # a sigmoid
        gate = 1 + (block.channel.view(b, c, 1, 1) + block.spatial) / 2
        torch.testing.assert_close(y, x_in * gate)
    assert sum(float(m.spatial.std()) > 0.01 for m in maps) >= len(maps) // 2  # maps, not constants: a real check
    assert model.training  # put back as it was, without the hooks of the capture
    assert all(not cell.edges[e]._forward_hooks for _, cell in cells for e in range(6))
    with torch.no_grad():
        torch.testing.assert_close(logits, model.eval()(x))


def test_cbam_maps_are_its_two_gates():
    """CBAM (Woo et al., 2018): Y = (X c) s, c its channel gate (B, C, 1, 1), s its spatial gate (B, 1, H, W)."""
    torch.manual_seed(0)
    model = create_model("resnet20", attention="cbam", num_classes=10)
    with torch.no_grad():
        for p in model.parameters():  # open the zero-initialised residual branches; random gates
            p.normal_(std=0.3)
    x = torch.randn(2, 3, 10, 10)
    seen: dict[str, tuple] = {}
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, CbamModule)]
    for name, block in blocks:
        block.register_forward_hook(lambda m, inputs, out, name=name: seen.__setitem__(name, (inputs[0], out)))
    maps, _ = attention_maps(model, x)
    assert [m.name for m in maps] == [name for name, _ in blocks] and {m.kind for m in maps} == {"cbam"}
    for block in maps:
        x_in, y = seen[block.name]
        b, c, h, w = x_in.shape
        assert block.channel.shape == (b, c) and block.spatial.shape == (b, 1, h, w)
        torch.testing.assert_close(y, x_in * block.channel.view(b, c, 1, 1) * block.spatial)
    assert sum(float(m.spatial.std()) > 0.01 for m in maps) >= len(maps) // 2


@pytest.mark.parametrize("attention", ["none", "se", "eca"])
def test_a_network_without_sase_or_cbam_blocks_is_refused(attention):
    with pytest.raises(ValueError, match="no SASE or CBAM block"):
        attention_maps(create_model("resnet20", attention=attention), torch.randn(1, 3, 8, 8))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run of ResNet-20 with the published block on digits, shared by the tests below."""
    run = tmp_path_factory.mktemp("maps") / "run"
    assert main(["train", *TINY, "--attention", "paper", "--out", str(run)]) == 0
    return run


def test_maps_of_a_trained_run_end_to_end(trained, tmp_path, capsys):
    run = trained
    capsys.readouterr()
    assert main(["maps", str(run), "--images", "3", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "resnet20 + paper: spatial attention of 9 blocks on 3 digits test images (seed 1)" in printed
    figure = matplotlib.image.imread(run / "attention_maps.png")
    assert figure.shape[0] > 100 and figure.shape[1] > figure.shape[0]  # three rows of ten panels
    assert figure[..., :3].std() > 0.05  # drawn, not blank

    out = tmp_path / "elsewhere.png"
    assert main(["maps", str(run / "model.safetensors"), "--images", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize("flags,message", [
    (["--images", "65"], "--images 65: at most 64"),
    (["--images", "0"], "argument --images: must be at least 1"),
    (["--out", "maps.jpg"], "the figure is written as PNG"),
])
def test_bad_input_is_one_line(trained, capsys, flags, message):
    capsys.readouterr()
    assert main(["maps", str(trained), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sase maps: error:") and message in err[0], err


def test_a_run_without_sase_blocks_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps-per-epoch", "1", "--attention", "se", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["maps", str(run)]) == 2
    assert "sase maps: error: the network has no SASE or CBAM block" in capsys.readouterr().err
    assert not (run / "attention_maps.png").exists()


def test_box_masks_mark_each_box():
    corners = torch.tensor([[0, 0], [2, 1], [3, 3]])
    masks = box_masks(corners, side=2, size=5)
    assert masks.shape == (3, 1, 5, 5) and masks.dtype == torch.bool
    for mask, (top, left) in zip(masks[:, 0], corners.tolist()):
        want = torch.zeros(5, 5, dtype=torch.bool)
        for r in range(top, top + 2):
            for c in range(left, left + 2):
                want[r, c] = True
        assert torch.equal(mask, want)


def test_digit_contrast_is_the_mean_inside_the_box_and_outside_it():
    torch.manual_seed(1)
    model = create_model("resnet20", attention="paper").eval()
    with torch.no_grad():
        for cell in (m for m in model.modules() if isinstance(m, Cell)):
            for p in cell.parameters():
                p.normal_(std=0.5)
    size, side = 12, 5
    images = torch.randn(5, 3, size, size)
    corners = torch.randint(0, size - side + 1, (5, 2))
    got = digit_contrast(model, images, corners, side, batch_size=2)  # batches of 2, 2 and 1
    maps, _ = attention_maps(model, images)
    assert [c.name for c in got] == [m.name for m in maps]
    for contrast, block in zip(got, maps):
        up = torch.nn.functional.interpolate(block.spatial, size=(size, size), mode="bilinear", align_corners=False)
        inside = [up[i, 0, t:t + side, l:l + side] for i, (t, l) in enumerate(corners.tolist())]
        total_inside = sum(float(b.sum()) for b in inside)
        assert contrast.digit == pytest.approx(total_inside / (5 * side * side), rel=1e-5)
        assert contrast.elsewhere == pytest.approx((float(up.sum()) - total_inside) / (5 * (size * size - side * side)),
                                                   rel=1e-5)
        assert contrast.ratio == pytest.approx(contrast.digit / contrast.elsewhere)


def test_maps_on_cluttered_digits_measure_the_attention_on_the_digit(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", "cluttered-digits", "--image-size", "16", "--attention", "paper",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["maps", str(run), "--images", "2"]) == 0
    printed = capsys.readouterr().out
    assert "over all 2000 test images:" in printed and "layer3.2" in printed
    report = json.loads((run / "attention_maps.json").read_text())
    assert report["images"] == 2000 and report["digit_box"] == 6 and len(report["blocks"]) == 9
    for row in report["blocks"]:
        assert 0 < row["digit"] < 1 and 0 < row["elsewhere"] < 1
        assert row["ratio"] == pytest.approx(row["digit"] / row["elsewhere"])
        assert f"ratio {row['ratio']:.2f}" in printed
