"""The search on several processes (gloo, CPU): the same α everywhere, gradients of the whole batch, torchrun."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sase.search import Architect, Search, SearchConfig
from sase.utils.checkpoint import load_checkpoint

TINY = SearchConfig(epochs=2, batch_size=8, steps_per_epoch=3, image_size=8, eval_images=64, checkpoint_every=2,
                    device="cpu")
CLI_TINY = ["--epochs", "2", "--batch-size", "8", "--steps-per-epoch", "3", "--image-size", "8", "--eval-images", "64",
            "--quiet",
            "--device", "cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank: int, size: int, port: int) -> None:
    """What torchrun sets for each process, then the process group the code under test would join."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size))
    torch.set_num_threads(1)


def _search_process(rank: int, size: int, port: int, config: SearchConfig, record: str) -> None:
    join(rank, size, port)
    search = Search(config, progress=False)
    alphas, genotypes = [], []
    end_epoch = search._end_epoch

    def recording(*args) -> None:
        end_epoch(*args)
        alphas.append(search.model.alpha.detach().clone())
        genotypes.append(search.model.genotype().to_dict())

    search._end_epoch = recording
    search.run()
    weights = {k: v for k, v in search.model.state_dict().items()}
    torch.save({"alphas": alphas, "genotypes": genotypes, "weights": weights}, f"{record}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("order, sampling", [("2", "none"), ("1", "gumbel")])
def test_two_processes_hold_the_same_alpha_and_genotype_at_every_epoch(tmp_path, order, sampling):
    # the sampled case in one epoch: what it adds is DistributedDataParallel with candidates that got no gradient
    config = replace(TINY, order=order, sampling=sampling, epochs=2 if sampling == "none" else 1,
                     out=str(tmp_path / "run"))
    mp.spawn(_search_process, args=(2, free_port(), config, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(ranks[0]["alphas"]) == config.epochs
    for a, b in zip(ranks[0]["alphas"], ranks[1]["alphas"]):
        assert torch.equal(a, b)
    assert ranks[0]["genotypes"] == ranks[1]["genotypes"]
    assert ranks[0]["alphas"][-1].std() > 1e-3  # α moved: the processes agree on a step, not on standing still
    for k, w in ranks[0]["weights"].items():  # weights identical, buffers too (rank 0's are broadcast)
        torch.testing.assert_close(w, ranks[1]["weights"][k], rtol=0, atol=0, msg=k)
    # rank 0 wrote the run; its checkpoint holds what every process holds
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert torch.equal(saved["model"]["alpha"], ranks[0]["alphas"][-1])
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [r["epoch"] for r in rows] == [str(e + 1) for e in range(config.epochs)]
    assert json.loads(rows[-1]["genotype"]) == ranks[0]["genotypes"][-1]


def _gradient_process(rank: int, size: int, port: int, record: str, train_mode: bool) -> None:
    join(rank, size, port)
    dist.init_process_group("gloo")
    from test_search import tiny_problem  # tests/ is on the spawned process's path too

    grads = {}
    for order in (1, 2, "exact"):
        model, opt, train, val = tiny_problem(seed=5)
        model.train(train_mode)
        share = lambda b: (b[0][rank::size], b[1][rank::size])  # this process's half of each batch
        grads[str(order)] = Architect(model, opt, order=order).alpha_gradient(share(train), share(val))[0]
    torch.save(grads, f"{record}/grad{rank}.pt")
    dist.destroy_process_group()


def test_a_two_process_alpha_gradient_is_the_whole_batch_gradient(tmp_path):
    """In eval mode (BatchNorm from running statistics, so no sample depends on the others in its batch),
    the hypergradient of every order on two halves, averaged as the architect does, is the one process's
    on the whole batch: the virtual step, v and the Hessian-vector product are all of the whole batch."""
    from test_search import tiny_problem

    mp.spawn(_gradient_process, args=(2, free_port(), str(tmp_path), False), nprocs=2)
    ranks = [torch.load(tmp_path / f"grad{r}.pt") for r in range(2)]
    for order in (1, 2, "exact"):
        model, opt, train, val = tiny_problem(seed=5)
        model.eval()
        whole, _ = Architect(model, opt, order=order).alpha_gradient(train, val)
        assert torch.equal(ranks[0][str(order)], ranks[1][str(order)])
        torch.testing.assert_close(ranks[0][str(order)], whole, rtol=1e-9, atol=1e-12, msg=f"order {order}")


def test_a_two_process_first_order_gradient_is_the_mean_of_the_halves(tmp_path):
    """In training mode, first order: the mean of the gradients one process computes on each half."""
    from test_search import tiny_problem

    mp.spawn(_gradient_process, args=(2, free_port(), str(tmp_path), True), nprocs=2)
    got = torch.load(tmp_path / "grad0.pt")["1"]
    halves = []
    for rank in range(2):
        model, opt, train, val = tiny_problem(seed=5)
        share = lambda b: (b[0][rank::2], b[1][rank::2])
        halves.append(Architect(model, opt, order=1).alpha_gradient(share(train), share(val))[0])
    torch.testing.assert_close(got, (halves[0] + halves[1]) / 2, rtol=1e-9, atol=1e-12)


def torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SASE_DIST_TIMEOUT": "60"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "sase", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_a_search_resumes_under_torchrun_and_back_in_one_process(tmp_path):
    from sase.cli import main
    out = tmp_path / "run"
    # one process writes the first epoch's checkpoint; two processes (torchrun) continue it; one finishes it
    assert main(["search", *CLI_TINY, "--order", "1", "--epochs", "1", "--out", str(out)]) == 0
    for written in ("verdict.json", "alpha_heatmap.png"):
        (out / written).unlink()  # to be written again at the end of the torchrun run
    resumed = torchrun(["search", "--out", str(out), "--resume", "--epochs", "2", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("genotype:") == 1  # rank 0 alone prints
    assert (out / "verdict.json").exists() and (out / "alpha_heatmap.png").exists()
    assert [r["epoch"] for r in csv.DictReader((out / "history.csv").open())] == ["1", "2"]
    assert main(["search", "--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0
    assert [r["epoch"] for r in csv.DictReader((out / "history.csv").open())] == ["1", "2", "3"]


def test_a_batch_that_does_not_split_over_the_processes_is_one_line(tmp_path):
    done = torchrun(["search", *CLI_TINY, "--batch-size", "7", "--out", str(tmp_path / "r")])
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("sase search: error:")]
    assert ours == ["sase search: error: --batch-size 7 does not split evenly over 2 processes: the batch is the "
                    "global one; give a multiple of 2"]
    assert not (tmp_path / "r").exists()
