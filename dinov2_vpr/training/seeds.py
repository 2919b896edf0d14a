"""Seeds derived from a run's seed and its position (epoch, step, ...): the same on every rank and after a resume."""

import numpy as np
import torch


def step_seed(*key: int) -> int:
    """A 32-bit seed from ``key`` (e.g. seed, epoch, step), well mixed by :class:`numpy.random.SeedSequence`."""
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


def step_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by :func:`step_seed` of ``key``."""
    return torch.Generator().manual_seed(step_seed(*key))
