"""Data order that is a pure function of (seed, epoch, position), so a run can resume mid-epoch exactly.

`SeededBatches` shuffles a fixed set of indices per epoch and can start at any batch; it yields
(index, epoch) keys. `SeededSamples` reads such a key and draws the sample's random augmentation
from a generator seeded by (seed, epoch, index), so what a batch holds does not depend on worker
processes or on how many batches came before it in this process.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

Key = tuple[int, int]  # (index, epoch)


def _mix(*values: int) -> int:
    """A 63-bit seed from a few integers (stable across processes, unlike hash())."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h


class SeededBatches(Sampler[list[Key]]):
    """Shuffled batches of `indices`, the same for the same (seed, epoch), startable at batch `start`.

    With `shard=(rank, processes)` each batch is the global batch's share of process `rank` (every
    processes-th sample from the rank-th): the processes of a torchrun together see exactly the batches
    one process would, in the same order, each sample once.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 drop_last: bool = True, shard: tuple[int, int] = (0, 1)) -> None:
        if len(indices) < batch_size and drop_last:
            raise ValueError(f"{len(indices)} samples cannot fill one batch of {batch_size}; "
                             "lower the batch size or add data")
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.rank, self.processes = shard
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def batches(self) -> int:
        """Batches in a whole epoch."""
        n, b = len(self.indices), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __len__(self) -> int:
        return self.batches() - self.start

    def __iter__(self) -> Iterator[list[Key]]:
        order = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            order = order[torch.randperm(len(order), generator=g)]
        for b in range(self.start, self.batches()):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size][self.rank::self.processes]
            yield [(int(i), self.epoch) for i in batch]


class SeededSamples(Dataset):
    """`dataset[index]`, its random transforms seeded by (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Key):
        index, epoch = key
        # save, seed and restore the CPU generator by hand: torch.random.fork_rng and torch.manual_seed
        # also visit every accelerator backend, 25x slower per sample than this
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(_mix(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


def split_indices(n: int, portion: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of range(n): the first `portion` and the rest."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(round(n * portion))
    if cut == 0 or cut == n:
        raise ValueError(f"splitting {n} samples at {portion} leaves one side empty")
    return perm[:cut], perm[cut:]
