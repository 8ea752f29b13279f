"""Test-session settings: the suite runs in two xdist workers, so each uses one torch thread.

Tiny models gain nothing from intra-op threads, and two workers with two threads each on a two-core
machine oversubscribe it several times over. The environment variable carries the setting to the
child processes some tests start, so that a run in a child computes bit for bit what one in-process
does (a convolution's float sums depend on how many threads split them).
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
