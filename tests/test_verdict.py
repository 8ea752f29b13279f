"""The search's verdict: decided or not, per edge and overall, on hand-made α and on tiny real searches."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import pytest
import torch

from sase import EDGE_NAMES
from sase.cli import main
from sase.ops import OPS
from sase.cell import EDGES
from sase.search import DECIDED_MARGIN, SearchConfig, judge, read_verdict, run_search
from sase.search.config import REFERENCE_ALPHA_STEPS, REFERENCE_ARCH_LR
from sase.search.evidence import saved_evidence
from sase.utils.checkpoint import load_checkpoint

TINY = SearchConfig(epochs=2, batch_size=8, steps_per_epoch=3, image_size=8, eval_images=64, checkpoint_every=1,
                    order="1")


def logits_for(probs: list[float]) -> list[float]:
    """α whose softmax is `probs` (log-probabilities: softmax is shift-invariant)."""
    return [math.log(p) for p in probs]


def test_uniform_alpha_is_undecided_on_every_edge():
    verdict = judge(1e-3 * torch.randn(1, 6, 7, generator=torch.Generator().manual_seed(0)))
    assert not verdict.decided and len(verdict.undecided) == 6
    assert verdict.min_margin < 0.01
    assert "undecided" in verdict.warning() and "--epochs" in verdict.warning() and "--arch-lr" in verdict.warning()


def test_margin_is_top_minus_runner_up_probability(tmp_path):
    # probabilities written out by hand; softmax(log p) = p
    probs = [0.40, 0.25, 0.15, 0.08, 0.06, 0.04, 0.02]
    alpha = torch.tensor([logits_for(probs)] * 6).unsqueeze(0)
    verdict = judge(alpha)
    for e, edge in zip(verdict.edges, EDGES):
        assert e.top == list(OPS[edge.op_set])[0] and e.runner_up == list(OPS[edge.op_set])[1]
        assert e.top_prob == pytest.approx(0.40, abs=1e-6) and e.margin == pytest.approx(0.15, abs=1e-6)
    assert verdict.decided and verdict.margin == DECIDED_MARGIN
    verdict.write(tmp_path)
    saved = read_verdict(tmp_path)
    assert saved["decided"] is True and saved["min_margin"] == pytest.approx(0.15) and saved["undecided_edges"] == []


def test_one_close_edge_makes_the_search_undecided():
    clear = logits_for([0.40, 0.25, 0.15, 0.08, 0.06, 0.04, 0.02])
    close = logits_for([0.20, 0.19, 0.15, 0.14, 0.12, 0.10, 0.10])  # runner-up 0.01 behind
    alpha = torch.tensor([clear, clear, clear, close, clear, clear]).unsqueeze(0)
    verdict = judge(alpha)
    assert not verdict.decided
    assert [e.edge for e in verdict.undecided] == [EDGE_NAMES[3]]
    assert judge(alpha, margin=0.005).decided  # the threshold is the caller's


def test_per_stage_groups_are_judged_each():
    clear = logits_for([0.40, 0.25, 0.15, 0.08, 0.06, 0.04, 0.02])
    alpha = torch.tensor([[clear] * 6, [[0.0] * 7] * 6])  # group 1 uniform
    verdict = judge(alpha)
    assert not verdict.decided and {e.group for e in verdict.undecided} == {1}
    assert all(name.startswith("g1/") for name in verdict.to_dict()["undecided_edges"])


def test_budget_matched_arch_lr():
    # the paper's own run keeps its 3e-4; a run with 100x fewer α steps gets 100x the lr
    assert SearchConfig(epochs=100, arch_lr=None).resolved_arch_lr(195) == pytest.approx(REFERENCE_ARCH_LR)
    steps = REFERENCE_ALPHA_STEPS // 100
    assert SearchConfig(epochs=1).resolved_arch_lr(steps) == pytest.approx(100 * REFERENCE_ARCH_LR)
    # warm-up epochs take no α step, so they do not count
    assert SearchConfig(epochs=3, warmup_epochs=1).resolved_arch_lr(steps) == pytest.approx(50 * REFERENCE_ARCH_LR)
    assert SearchConfig(arch_lr=1e-3).resolved_arch_lr(10) == 1e-3
    assert SearchConfig().with_preset("paper").arch_lr == REFERENCE_ARCH_LR


def test_alpha_that_cannot_move_is_undecided_and_warned(tmp_path, capsys):
    out = tmp_path / "frozen"
    code = main(["search", "--epochs", "2", "--batch-size", "8", "--steps-per-epoch", "3", "--image-size", "8",
                 "--order", "1", "--arch-lr", "1e-7", "--quiet", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "UNDECIDED" in captured.out
    assert "warning: the search ended undecided" in captured.err
    verdict = read_verdict(out)
    assert verdict["decided"] is False and len(verdict["undecided_edges"]) == 6
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["decided"] for r in rows] == ["False", "False"]
    for edge in EDGE_NAMES:
        probs = sorted((float(v) for k, v in rows[-1].items() if k.startswith(f"alpha/{edge}/")), reverse=True)
        assert float(rows[-1][f"top/{edge}"]) == pytest.approx(probs[0], abs=1e-5)
        assert float(rows[-1][f"margin/{edge}"]) == pytest.approx(probs[0] - probs[1], abs=1e-5)


def test_large_alpha_lr_moves_alpha_far_and_the_verdict_file_is_the_judgement_of_the_final_alpha(tmp_path):
    # α starts at the 1e-3 scale: every edge's margin is about 1e-4. Ten EdgeAdam steps at lr 1 move
    # whole logits. On 8x8 images the gradients are mostly noise, and some candidates are the same
    # function at initialisation (they get the same gradient and stay tied), so not every edge need
    # separate: the median edge must, by far more than 100x its initial margin.
    config = replace(TINY, epochs=1, steps_per_epoch=10, arch_lr=1.0, out=str(tmp_path))
    result = run_search(config, progress=False)
    margins = sorted(e.top_prob - e.runner_up_prob for e in result.verdict.edges)
    assert margins[len(margins) // 2] > 0.03, margins
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    saved = json.loads((tmp_path / "verdict.json").read_text())
    judged = judge(checkpoint["model"]["alpha"], config.decided_margin, saved_evidence(checkpoint))
    assert saved == json.loads(json.dumps(judged.to_dict()))


@pytest.mark.parametrize("field,value", [("steps_per_epoch", 0), ("lr_min", -1.0), ("arch_lr", 0.0),
                                         ("momentum", 1.0), ("grad_clip", -1.0), ("image_size", 0),
                                         ("decided_margin", 0.0), ("select", "best"), ("warmup_epochs", 4)])
def test_bad_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        SearchConfig(**{field: value})
