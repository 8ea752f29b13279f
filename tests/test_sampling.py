"""The sampled search (--sampling gumbel, GDAS): which candidate runs, how often, what value and α gradient.

Checked against independent statements of GDAS (Dong & Yang, CVPR 2019): the Gumbel-max draw picks
candidate k with probability softmax(α)_k; the value is the drawn candidate's output; the α gradient is
the straight-through one of softmax((α + g) / τ); the mean of many sampled outputs is DARTS' mixture.
"""
from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import interrupt_after
from scipy import stats
from test_ops import op_input

from sase.cell import EDGES
from sase.cli import main
from sase.ops import OPS
from sase.search import Search, SearchConfig, Supernet
from sase.search.supernet import MixedOp, full_mixture
from sase.utils.checkpoint import load_checkpoint

SETS = list(OPS)
ALPHA = torch.tensor([1.0, 0.4, 0.0, -0.3, -0.8, 0.2, -1.5])  # seven distinct probabilities


def sampling_op(op_set: str, channels: int = 8, alpha: torch.Tensor = ALPHA, tau: float = 1.0) -> MixedOp:
    """A mixed op of `op_set` with its own α row (as the supernet ties it), sampling, in training mode."""
    edge = next(i for i, e in enumerate(EDGES) if e.op_set == op_set)
    op = MixedOp(op_set, channels, 0, edge, sampling=True).double()
    full = torch.zeros(1, len(EDGES), len(alpha), dtype=torch.float64)
    full[0, edge] = alpha
    op.alpha = torch.nn.Parameter(full)
    op.tau = tau
    return op.train()


def record_calls(op: MixedOp) -> list[int]:
    """Indices of the candidates that ran, appended by forward hooks."""
    calls: list[int] = []
    for k, candidate in enumerate(op.ops):
        candidate.register_forward_hook(lambda *_, k=k: calls.append(k))
    return calls


@pytest.mark.parametrize("op_set", SETS)
def test_a_sampled_edge_runs_one_candidate_and_returns_its_output(op_set):
    torch.manual_seed(0)
    op = sampling_op(op_set)
    calls = record_calls(op)
    x = op_input(op_set, 5, 6, batch=2, channels=8).double()
    for _ in range(5):
        calls.clear()
        y = op(x)
        assert len(calls) == 1  # the other six never ran
        k = calls[0]
        calls.clear()
        torch.testing.assert_close(y, op.ops[k](x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [0.1, 10.0])
def test_draws_follow_softmax_alpha_at_any_temperature(tau):
    torch.manual_seed(1)
    op = sampling_op("channel_excitation", tau=tau)
    calls = record_calls(op)
    x = op_input("channel_excitation", 1, 1, channels=8).double()
    n = 3000
    with torch.no_grad():
        for _ in range(n):
            op(x)
    counts = torch.bincount(torch.tensor(calls), minlength=7).numpy()
    expected = n * torch.softmax(ALPHA.double(), 0).numpy()
    assert stats.chisquare(counts, expected).pvalue > 1e-3, (counts, expected.round())


@pytest.mark.parametrize("op_set", SETS)
def test_the_mean_of_sampled_outputs_is_darts_mixture(op_set):
    torch.manual_seed(2)
    op = sampling_op(op_set)
    x = op_input(op_set, 4, 4, batch=2, channels=8).double()
    n = 2000
    with torch.no_grad():
        samples = torch.stack([op(x) for _ in range(n)])
        mixture = sum(p * candidate(x) for p, candidate in zip(torch.softmax(ALPHA.double(), 0), op.ops))
    z = (samples.mean(0) - mixture) / (samples.std(0) / n ** 0.5).clamp_min(1e-9)
    assert z.abs().max() < 5, float(z.abs().max())


@pytest.mark.parametrize("op_set", SETS)
def test_the_alpha_gradient_is_the_straight_through_one(op_set):
    tau = 0.7
    op = sampling_op(op_set, tau=tau)
    x = op_input(op_set, 3, 5, batch=2, channels=8).double()
    torch.manual_seed(3)
    y = op(x)
    upstream = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * upstream).sum(), op.alpha)
    # the same Gumbel noise, drawn again as torch.nn.functional.gumbel_softmax draws it
    torch.manual_seed(3)
    g = -torch.empty(7, dtype=torch.float64).exponential_().log()
    s = torch.softmax((ALPHA.double() + g) / tau, 0)
    k = int(s.argmax())
    with torch.no_grad():
        v = torch.full((7,), float(upstream.sum()), dtype=torch.float64)  # ∂L/∂h_j = Σ upstream for j ≠ k
        v[k] = (upstream * op.ops[k](x)).sum()  # ∂L/∂h_k = <upstream, op_k(x)>
    expected = (torch.diag(s) - torch.outer(s, s)) @ v / tau  # ∂softmax((α + g)/τ)/∂α, transposed, times v
    edge = op.edge
    torch.testing.assert_close(grad[0, edge], expected, rtol=1e-9, atol=1e-12)
    assert not grad[0, torch.arange(len(EDGES)) != edge].any()


def test_eval_mode_and_full_mixture_run_every_candidate():
    torch.manual_seed(4)
    plain = Supernet("resnet20", num_classes=10)
    sampled = Supernet("resnet20", num_classes=10, sampling="gumbel")
    sampled.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(sampled.eval()(x), plain.eval()(x))
        plain.train(), sampled.train()
        with full_mixture(sampled):
            torch.testing.assert_close(sampled(x), plain(x))
        assert not torch.allclose(sampled(x), plain(x))  # outside, a training forward draws one candidate per edge
    assert all(m.sampling for m in sampled.mixed_ops())  # restored


def test_the_temperature_decays_linearly_from_tau_max_to_tau_min():
    config = SearchConfig(order="1", sampling="gumbel", epochs=5, tau_max=8.0, tau_min=0.5)
    assert [config.temperature(e) for e in range(5)] == pytest.approx([8.0, 6.125, 4.25, 2.375, 0.5])
    with pytest.raises(ValueError, match="--order 1"):
        SearchConfig(sampling="gumbel")  # the default order is 2
    with pytest.raises(ValueError, match="tau_min"):
        SearchConfig(order="1", sampling="gumbel", tau_min=20.0)
    with pytest.raises(ValueError, match="temperature"):
        Supernet("resnet20", num_classes=10, sampling="gumbel").set_temperature(0.0)


def test_sampled_search_end_to_end_and_resumed_mid_epoch(tmp_path, capsys):
    """`sase search --sampling gumbel`, then the same search stopped mid-epoch and resumed: the same end.

    The draws come from the global generator, whose state the checkpoint keeps."""
    whole = tmp_path / "whole"
    args = ["search", "--sampling", "gumbel", "--epochs", "2", "--batch-size", "8",  # first order by default
            "--steps-per-epoch", "3", "--image-size", "8", "--eval-images", "64", "--checkpoint-every", "1", "--quiet"]
    assert main([*args, "--out", str(whole)]) == 0
    assert "no indifference test" in capsys.readouterr().out
    assert [float(r["tau"]) for r in csv.DictReader((whole / "history.csv").open())] == [10.0, 0.1]
    verdict = json.loads((whole / "verdict.json").read_text())
    assert verdict["indifference_tested"] is False and not verdict["indifferent_edges"]
    saved = json.loads((whole / "config.json").read_text())
    assert saved["sampling"] == "gumbel" and saved["order"] == "1"

    config = SearchConfig(**{**saved, "out": str(tmp_path / "cut")})
    interrupt_after(Search(config, progress=False), 4, "_weight_step")  # epoch 2, step 2, after its step 1's checkpoint
    Search(config, resume=True, progress=False).run()
    cut, done = (load_checkpoint(p / "checkpoint.pt")["model"] for p in (tmp_path / "cut", whole))
    assert cut.keys() == done.keys() and all(torch.equal(cut[k], done[k]) for k in cut)


def test_sampling_is_one_line_error_with_second_order(tmp_path, capsys):
    assert main(["search", "--sampling", "gumbel", "--order", "2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--order 1" in err, err
    assert not (tmp_path / "r").exists()
