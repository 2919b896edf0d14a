"""Metric-learning losses on place descriptors and labels (P x K batches), registered in ``LOSSES``.

Unlike the pair losses, these take ``(descriptors (B, D), place labels (B,))`` and return the batch
loss with the miner's statistics. Under ``torch.distributed`` every rank gathers the whole global
batch, so the miner and the loss see the same pairs on any number of ranks.
"""

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dinov2_vpr.registry import LOSSES


class _AllGather(torch.autograd.Function):
    """``(W, B, D)``: every rank's ``(B, D)`` tensor; backward sums the ranks' gradients of this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.stack(gathered)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def gather_global_batch(descriptors: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The global batch from every rank's strided share (``global_batch[rank::world_size]``), in global order.

    The descriptors keep their gradients: the gather's backward sums the gradient that every
    rank computes for each share, so rank ``r``'s descriptors receive ``world_size`` times the
    gradient of the (identical) global loss, and DDP's average over ranks gives the one-rank
    gradient. Without an initialised process group of more than one rank, the inputs are returned.
    All ranks must hold as many rows, and the labels must be on the descriptors' device.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return descriptors, labels
    gathered = _AllGather.apply(descriptors)
    label_list = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(label_list, labels.contiguous())
    # Row j of rank r is row r + j * world_size of the global batch.
    return gathered.transpose(0, 1).flatten(0, 1), torch.stack(label_list, dim=1).flatten()


@LOSSES.register()
class MultiSimilarityLoss(nn.Module):
    """The multi-similarity loss on the pairs of the multi-similarity miner (pytorch-metric-learning).

    The defaults are SALAD's and BoQ's. Descriptors are compared by cosine similarity, in float32.

    Args:
        alpha: weight of the positive pairs' similarities.
        beta: weight of the negative pairs' similarities.
        base: the similarity that positives are pulled above and negatives pushed below.
        epsilon: the miner's margin: a positive is kept when it is less similar than the most
            similar negative plus ``epsilon``, a negative when it is more similar than the least
            similar positive minus ``epsilon``.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 50.0, base: float = 0.0, epsilon: float = 0.1) -> None:
        # Imported here: pytorch-metric-learning loads scipy, which registering the loss need not.
        from pytorch_metric_learning import losses, miners

        super().__init__()
        self.loss = losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
        self.miner = miners.MultiSimilarityMiner(epsilon=epsilon)

    def forward(self, descriptors: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, int]]:
        """The loss of the global batch (the same on every rank) and the mined ``positive_pairs``, ``negative_pairs``.

        Args:
            descriptors: ``(B, D)`` this rank's descriptors.
            labels: ``(B,)`` their place labels.
        """
        descriptors, labels = gather_global_batch(descriptors.float(), labels)
        pairs = self.miner(descriptors, labels)
        loss = self.loss(descriptors, labels, pairs)
        return loss, {"positive_pairs": int(pairs[0].numel()), "negative_pairs": int(pairs[2].numel())}
