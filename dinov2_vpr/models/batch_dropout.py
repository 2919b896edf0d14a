"""Dropout whose masks do not depend on how the global batch is split over ranks.

Under :func:`global_batch_dropout`, every :class:`BatchDropout` in training mode draws its mask for
the whole global batch from a generator seeded by the trainer (seed, epoch, step), the same on
every rank, and keeps this rank's rows. A sample's mask then depends only on the seed, the step and
its place in the global batch, so 1 and N ranks train the same model, and a resumed run draws the
masks it would have drawn. Outside the context it is :class:`torch.nn.Dropout`.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class _MaskSource:
    seed: int
    global_rows: int
    local_rows: Tensor
    generators: dict[torch.device, torch.Generator] = field(default_factory=dict)

    def generator(self, device: torch.device) -> torch.Generator:
        """One generator per device, seeded alike, drawn from in the order the dropout layers run."""
        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[device]


_ACTIVE: ContextVar[_MaskSource | None] = ContextVar("global_batch_dropout", default=None)


@contextmanager
def global_batch_dropout(seed: int, global_rows: int, local_rows: Tensor) -> Iterator[None]:
    """Within the block, :class:`BatchDropout` layers draw masks for ``global_rows`` rows from ``seed`` and
    apply rows ``local_rows`` (this rank's positions in the global batch, in the order of its inputs)."""
    token = _ACTIVE.set(_MaskSource(seed, global_rows, local_rows.to(torch.long)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class BatchDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` that, in training under :func:`global_batch_dropout`, takes its mask
    from the global batch's (see the module docstring); it has no state, so it replaces ``nn.Dropout``
    without changing state-dict keys."""

    def forward(self, input: Tensor) -> Tensor:
        source = _ACTIVE.get()
        if source is None or not self.training or self.p == 0:
            return super().forward(input)
        if len(source.local_rows) != input.shape[0]:
            raise ValueError(
                f"global_batch_dropout gives {len(source.local_rows)} rows, the input has {input.shape[0]}"
            )
        keep = 1.0 - self.p
        shape = (source.global_rows, *input.shape[1:])
        draws = torch.rand(shape, generator=source.generator(input.device), device=input.device)
        mask = draws[source.local_rows.to(input.device)] < keep
        return input * mask.to(input.dtype) / keep
