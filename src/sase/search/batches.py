"""A search's data: the seeded batches of both halves, and the fixed image sets it evaluates on.

`SearchBatches` is the part of `sase.search.loop.Search` that makes its loaders and moves batches to
the device, mixed in as `RunFolder` is: it holds no state of its own, everything it reads is the
search's (config, world, device, the datasets and the split).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Subset

from ..utils.sampling import SeededBatches, SeededSamples
from .supernet import full_mixture

HESSIAN_IMAGES = 256  # images of the α half on which the Hessian's dominant eigenvalue is tracked
# images of the weights' half whose batch statistics replace BatchNorm's running ones before every evaluation
RECALIBRATION_IMAGES = 1024


class SearchBatches:
    """Loader and batch methods of a search (mixed into `Search`, whose attributes they use)."""

    def _batches(self, indices: list[int], seed: int) -> tuple[SeededBatches, DataLoader]:
        """The seeded, resumable batches of one half: (sampler, loader)."""
        sampler = SeededBatches(indices, self.config.batch_size, seed, shard=(self.world.rank, self.world.size))
        # a generator of its own: making an iterator draws the workers' base seed, which must not come from
        # the global generator that --sampling draws candidates from (a resume makes its iterators anew)
        loader = DataLoader(SeededSamples(self.train_set, seed), batch_sampler=sampler,
                            num_workers=self.config.workers, persistent_workers=self.config.workers > 0,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(seed))
        return sampler, loader

    def _to_device(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def steps_per_epoch(self) -> int:
        steps = min(self.fit_batches[0].batches(), self.val_batches[0].batches())
        return steps if self.config.steps_per_epoch is None else min(steps, self.config.steps_per_epoch)

    def recalibrate_batchnorm(self) -> None:
        """BatchNorm's running statistics recomputed for the weights as they stand (Guo et al., ECCV 2020).

        The running averages trail the weights by ~1/momentum steps; in a supernet whose unbounded
        attention multipliers compound over the blocks, statistics that lag a fast-changing early
        search blow the evaluation up (NaN losses, below-chance accuracy) while training, on batch
        statistics, is fine. The same fixed images of the weights' half on every process, unaugmented.
        """
        with full_mixture(self.model):  # the statistics of the network that is evaluated, not of samples of it
            update_bn(self._loader(self.fit_idx[:self._evaluated(RECALIBRATION_IMAGES)]), self.model, self.device)

    def _eval_loader(self) -> DataLoader:
        evaluated = self.val_idx[:self._evaluated(len(self.val_idx))]
        return self._loader(evaluated[self.world.rank::self.world.size])  # each image on one process

    def _evaluated(self, images: int) -> int:
        """`images`, or fewer under --eval-images (the halves are seeded permutations: their first images are a
        random subset)."""
        cap = self.config.eval_images
        return images if cap is None else min(images, cap)

    def _loader(self, indices: list[int]) -> DataLoader:
        # no gradients are kept, so a large batch costs little memory and saves the supernet's per-call
        # overhead (28 candidate ops per block), which dominates on small images
        return DataLoader(Subset(self.eval_set, indices), batch_size=max(2 * self.config.batch_size, 256),
                          num_workers=self.config.workers, pin_memory=self.device.type == "cuda")

    def _selection_batches(self) -> list[tuple[Tensor, Tensor]]:
        """The whole α half, unaugmented: every candidate removal is scored on the same images (on every process)."""
        return [self._to_device(b) for b in self._loader(self.val_idx)]

    def _hessian_batches(self) -> list[tuple[Tensor, Tensor]]:
        """A fixed slice of the α half (the same images every epoch), so the eigenvalues are comparable."""
        loader = DataLoader(Subset(self.eval_set, self.val_idx[:HESSIAN_IMAGES]), batch_size=self.config.batch_size)
        return [self._to_device(b) for b in loader]
