"""The multi-similarity loss: pytorch-metric-learning's values, and the same loss and gradients on 1 and 2 ranks."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytorch_metric_learning import losses, miners

from dinov2_vpr.registry import LOSSES
from dinov2_vpr.training.place_losses import MultiSimilarityLoss

P, K, DIM = 6, 4, 8


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(P).repeat_interleave(K)
    # Place centres plus noise: some positives and negatives are hard, some are not.
    embeddings = torch.randn(P, DIM, generator=generator)[labels] + 0.8 * torch.randn(P * K, DIM, generator=generator)
    return embeddings, labels


def _reference(embeddings: torch.Tensor, labels: torch.Tensor, epsilon=0.1, alpha=1.0, beta=50.0, base=0.0):
    """The miner's rule and the loss of the paper, written out anchor by anchor."""
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    similarity = unit @ unit.T
    total, positives, negatives = 0.0, 0, 0
    for anchor in range(len(labels)):
        same = labels == labels[anchor]
        same[anchor] = False
        other = labels != labels[anchor]
        pos, neg = similarity[anchor][same], similarity[anchor][other]
        hard_pos = pos[pos - epsilon < neg.max()]
        hard_neg = neg[neg + epsilon > pos.min()]
        positives, negatives = positives + len(hard_pos), negatives + len(hard_neg)
        total += torch.log1p(torch.exp(-alpha * (hard_pos - base)).sum()) / alpha
        total += torch.log1p(torch.exp(beta * (hard_neg - base)).sum()) / beta
    return total / len(labels), positives, negatives


def test_registered_and_equal_to_pytorch_metric_learning():
    assert LOSSES.get("MultiSimilarityLoss") is MultiSimilarityLoss
    embeddings, labels = _batch()
    loss, stats = MultiSimilarityLoss()(embeddings, labels)
    reference = losses.MultiSimilarityLoss(alpha=1, beta=50, base=0)
    pairs = miners.MultiSimilarityMiner(epsilon=0.1)(embeddings, labels)
    assert torch.equal(loss, reference(embeddings, labels, pairs))
    expected, positives, negatives = _reference(embeddings, labels)
    assert stats == {"positive_pairs": positives, "negative_pairs": negatives}
    assert 0 < positives < P * K * (K - 1) and 0 < negatives < P * K * (P - 1) * K  # the miner selects
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def _descriptor_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Linear(DIM, 5)


def _run(inputs: torch.Tensor, labels: torch.Tensor, rank: int, world_size: int) -> dict:
    """Loss, miner statistics, and the weight and full-batch input gradients averaged over ranks as DDP does.

    (DDP itself takes 5 s to start here; its reducer is an all-reduce of the gradients divided by the ranks.)
    """
    model = _descriptor_model()
    inputs = inputs.clone().requires_grad_()
    loss, stats = MultiSimilarityLoss()(model(inputs[rank::world_size]), labels[rank::world_size])
    loss.backward()
    grads = {"weight_grad": model.weight.grad, "input_grad": inputs.grad}
    if world_size > 1:
        for grad in grads.values():
            dist.all_reduce(grad)
            grad /= world_size
    return {"loss": loss.detach(), **stats, **grads}


def _worker(rank: int, world_size: int, init_file: str, output: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        result = _run(*_batch(), rank, world_size)
        torch.save(result, f"{output}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_ranks_give_the_one_rank_loss_and_gradients(tmp_path: Path):
    single = _run(*_batch(), rank=0, world_size=1)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "result")), nprocs=2)
    for rank in range(2):
        double = torch.load(tmp_path / f"result.{rank}", weights_only=True)
        assert double["positive_pairs"] == single["positive_pairs"] > 0
        assert double["negative_pairs"] == single["negative_pairs"] > 0
        for name in ("loss", "weight_grad", "input_grad"):
            torch.testing.assert_close(double[name], single[name], rtol=1e-5, atol=1e-6, msg=name)
