"""Work shared by the ranks in strided shares (rank ``r`` of ``W`` takes items ``r::W``), gathered on every rank."""

import torch.distributed as dist
from torch import Tensor

from dinov2 import distributed


def gather_strided(share: Tensor, total: int) -> Tensor:
    """The ``total`` rows of which this rank holds ``share`` (rows ``rank::world_size``), on every rank, on the CPU."""
    world_size = distributed.get_world_size()
    if world_size == 1:
        return share.cpu()
    shares: list[Tensor | None] = [None] * world_size
    dist.all_gather_object(shares, share.cpu())
    rows = share.new_zeros((total, *share.shape[1:]), device="cpu")
    for rank, part in enumerate(shares):
        rows[rank::world_size] = part
    return rows
