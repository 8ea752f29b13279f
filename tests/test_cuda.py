"""Search and training on a CUDA device, in float32, bf16 and fp16, and checkpoints moved between devices;
the search step replayed from CUDA graphs against the eager step.

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
from sase.search.config import SearchConfig
from sase.search.graphs import GraphedStep
from sase.search.loop import Search
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


@pytest.mark.parametrize("amp", [None, "bf16"])
def test_a_sampled_search_on_cuda_resumes_on_the_cpu(tmp_path, amp):
    out = tmp_path / "s"
    flags = [] if amp is None else ["--amp", amp]
    assert main([*SEARCH, "--epochs", "2", "--order", "1", "--sampling", "gumbel", "--device", "cuda", *flags,
                 "--out", str(out)]) == 0
    alpha = load_checkpoint(out / "checkpoint.pt")["model"]["alpha"]
    assert alpha.dtype == torch.float32 and torch.isfinite(alpha).all() and alpha.std() > 1e-3
    assert main(["search", "--out", str(out), "--resume", "--epochs", "3", "--device", "cpu", "--quiet"]) == 0
    assert [r["tau"] for r in history(out)] == ["10.0", "0.1", "0.1"]  # τ re-stretched over the new total


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


def live_state(search: Search) -> dict[str, list[torch.Tensor]]:
    """Every tensor a search step changes, by kind: weights, α, BatchNorm statistics, both optimisers' state and
    the verdict's evidence."""
    params = dict(search.model.named_parameters())
    state = search.model.state_dict()
    optimizer = lambda opt: [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
    evidence = search.architect.evidence
    return {"weights": [t for n, t in state.items() if n in params and n != "alpha"], "alpha": [state["alpha"]],
            "buffers": [t for n, t in state.items() if n not in params],
            "weight optimiser": optimizer(search.optimizer), "α optimiser": optimizer(search.architect.optimizer),
            "evidence": [evidence.count, evidence.sum, evidence.sum_outer]}


def cuda_batches(n: int, size: int = 16) -> list[tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
    g = torch.Generator().manual_seed(3)
    batch = lambda: (torch.randn(16, 3, size, size, generator=g).cuda(), torch.randint(0, 10, (16,), generator=g).cuda())
    return [(batch(), batch()) for _ in range(n)]


def relative_error(tensors: list[torch.Tensor], references: list[torch.Tensor]) -> float:
    """‖tensors - references‖ / ‖references‖ over a whole group of tensors, in float64 (0 when both are zero)."""
    flat = lambda ts: torch.cat([t.double().flatten() for t in ts]) if ts else torch.zeros(1, dtype=torch.float64)
    a, b = flat(tensors), flat(references)
    return 0.0 if b.norm() == 0 and a.norm() == 0 else float((a - b).norm() / b.norm().clamp_min(1e-30))


# How far a step's result moves, as a share of its size, when its inputs move by float32 rounding (1e-7 relative
# noise on both batches; three steps measured on a CPU, the worst kept): max- and ReLU-type candidates route
# gradients by which element wins, a finite difference or a double backward across such a kink jumps, and Adam
# turns the α gradients that rounding flips into full-size moves. First order: under 3e-4 everywhere. Beyond it
# a step is ill-conditioned: weights 3.6e-2, α 0.45, the evidence (gradients over small probabilities) 4.7e-2,
# the α optimiser's moments 2.9e-3, BatchNorm statistics 1e-4. A replay runs other kernels than the eager step,
# so each kind is held to several times its sensitivity, and α to its moments alone; a stale or missing gradient
# errs by the whole step.
FIRST_ORDER_TOLERANCE = 1e-3
HIGHER_ORDER_TOLERANCE = {"weights": 0.3, "alpha": None, "buffers": 1e-2, "weight optimiser": 0.3,
                          "α optimiser": 5e-2, "evidence": 0.3}


@pytest.mark.parametrize("order,optimizer,amp", [("1", "edge_adam", None), ("2", "adam", None),
                                                 ("exact", "edge_adam", None), ("1", "adam", "bf16")])
def test_a_replayed_search_step_equals_the_eager_step(tmp_path, monkeypatch, order, optimizer, amp):
    # TF32 convolutions round to 10 mantissa bits, and a replay may run other cuDNN kernels than the eager
    # step (their plans depend on the addresses' alignment): off, so only float32 rounding is left
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    config = SearchConfig(dataset="digits", image_size=16, epochs=1, batch_size=16, order=order, arch_lr=0.01,
                          arch_optimizer=optimizer, amp=amp, device="cuda", out=str(tmp_path / "s"))
    search = Search(config, progress=False)
    assert search.graphed is not None  # the default on one CUDA device
    batches = cuda_batches(6)
    for b in batches[:3]:  # two eager warm-up steps, then a recording and its replay
        search._search_step(*b, search_alpha=True)
    assert search.graphed.recordings == 1
    for b in batches[3:]:  # from the same state, a replay and an eager step must make the same update
        before = {k: [t.clone() for t in ts] for k, ts in live_state(search).items()}
        replayed = [t.clone() for t in search._search_step(*b, search_alpha=True)]
        after_replay = {k: [t.clone() for t in ts] for k, ts in live_state(search).items()}
        for kind, tensors in live_state(search).items():
            for t, saved in zip(tensors, before[kind]):
                t.copy_(saved)
        graphed, search.graphed = search.graphed, None
        eager = search._search_step(*b, search_alpha=True)
        search.graphed = graphed
        assert relative_error([replayed[0]], [eager[0]]) < 1e-3  # the weights' loss
        assert abs(int(replayed[1]) - int(eager[1])) <= (0 if order == "1" else 1)  # hits: a near tie may flip
        after_eager = live_state(search)
        for kind, tensors in after_replay.items():
            tol = 5e-2 if amp else FIRST_ORDER_TOLERANCE if order == "1" else HIGHER_ORDER_TOLERANCE[kind]
            counts = [(a, e) for a, e in zip(tensors, after_eager[kind]) if not a.is_floating_point()]
            assert all(torch.equal(a, e) for a, e in counts)  # BatchNorm's batch counts
            floats = [(a, e, b0) for a, e, b0 in zip(tensors, after_eager[kind], before[kind]) if a.is_floating_point()]
            assert any(not torch.equal(a, b0) for a, _, b0 in floats), kind  # the replay did change it
            if tol is None:
                continue
            # model tensors by their update (a stale gradient errs by the whole step), optimiser moments and
            # evidence by their value (they hold this step's gradient at a fixed share)
            by_update = kind in ("weights", "alpha", "buffers")
            error = relative_error([a - b0 if by_update else a for a, _, b0 in floats],
                                   [e - b0 if by_update else e for _, e, b0 in floats])
            assert error < tol, (kind, error)
    assert search.graphed.recordings == 1


def test_a_graphed_search_stays_within_the_eager_search_s_own_spread(tmp_path, monkeypatch):
    """Over two epochs (two recordings, the first α step after a warm-up epoch) the graphed search differs from
    the eager one no more than two eager runs differ from each other (GPU kernels are not bit-reproducible)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    searches = []
    for i, graphs in enumerate((False, False, True)):
        config = SearchConfig(dataset="digits", image_size=16, epochs=3, warmup_epochs=1, batch_size=16,
                              steps_per_epoch=6, order="1", arch_lr=0.003, device="cuda", cuda_graphs=graphs,
                              out=str(tmp_path / f"run-{i}"))
        searches.append(Search(config, progress=False))
        searches[-1].run()
    eager, again, graphed = searches
    assert graphed.graphed.recordings == 3  # one per epoch: the cosine changes the lr
    spread = (eager.model.alpha - again.model.alpha).abs().max()
    moved = (graphed.model.alpha - eager.model.alpha).abs().max()
    assert (graphed.model.alpha.std() > 1e-3) and moved <= 4 * spread + 1e-4, (moved, spread)
    # the verdict's evidence is summed inside the replayed step: as many steps, and sums as close as α's
    counts = [float(s.architect.evidence.count) for s in searches]
    assert counts == [12.0] * 3  # both α epochs: 2 x 6 steps make one window (at least 50 steps, whole epochs)
    spread = (eager.architect.evidence.sum - again.architect.evidence.sum).abs().max()
    moved = (graphed.architect.evidence.sum - eager.architect.evidence.sum).abs().max()
    assert moved <= 4 * spread + 1e-3 * eager.architect.evidence.sum.abs().max(), (moved, spread)


def test_graphed_step_replays_new_batches_and_records_again_for_a_new_key():
    calls = []

    def step(train, val):
        calls.append(1)  # Python runs only while warming up or recording, never on a replay
        return train[0].sum() * scale + val[1].sum(), None

    graphed = GraphedStep(warmup=1)
    batch = lambda v: (torch.full((2, 3), float(v), device="cuda"), torch.full((2,), v, device="cuda"))
    scale = 2.0
    outs = [float(graphed(step, batch(i), batch(i), key=scale)[0]) for i in range(1, 5)]
    assert outs == [6 * i * 2 + 2 * i for i in range(1, 5)]
    assert len(calls) == 2 and graphed.recordings == 1  # one eager warm-up, one recording, then replays
    scale = 3.0
    assert float(graphed(step, batch(1), batch(1), key=scale)[0]) == 6 * 3 + 2  # recorded at once: shapes are warm
    assert float(graphed(step, batch(2), batch(2), key=scale)[0]) == 12 * 3 + 4
    assert graphed.recordings == 2 and len(calls) == 3
    short = (torch.ones(1, 3, device="cuda"), torch.ones(1, device="cuda"))
    assert float(graphed(step, short, batch(1), key=scale)[0]) == 3 * 3 + 2  # a new shape: run, not replayed
