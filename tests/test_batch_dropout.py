"""Dropout masks drawn for the global batch: rows computed apart (as on two ranks) equal rows computed together."""

import torch

from dinov2_vpr.models.aggregators import SALAD
from dinov2_vpr.models.aggregators.base import BackboneTokens
from dinov2_vpr.models.batch_dropout import BatchDropout, global_batch_dropout
from dinov2_vpr.models.heads import MLPHead

RANKS = ([0, 2, 4], [1, 3, 5])  # rank r of 2 takes rows r::2 of a global batch of 6


def _apart_and_together(module, inputs: torch.Tensor, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    with global_batch_dropout(seed, len(inputs), torch.arange(len(inputs))):
        together = module(inputs)
    parts = []
    for rows in RANKS:
        with global_batch_dropout(seed, len(inputs), torch.tensor(rows)):
            parts.append(module(inputs[rows]))
    return torch.cat(parts), together[[*RANKS[0], *RANKS[1]]]


def test_masks_follow_the_global_batch_not_the_ranks():
    dropout = BatchDropout(0.25).train()
    ones = torch.ones(6, 40)
    apart, together = _apart_and_together(dropout, ones)
    torch.testing.assert_close(apart, together, rtol=0, atol=0)
    torch.testing.assert_close(together.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert 0.1 < (together == 0).float().mean() < 0.4
    with global_batch_dropout(12, 6, torch.arange(6)):
        assert not torch.equal(dropout(ones), together[[0, 3, 1, 4, 2, 5]])  # another step, other masks
    assert torch.equal(dropout.eval()(ones), ones)  # eval: no dropout


def test_outside_the_context_it_is_torch_dropout():
    torch.manual_seed(5)
    expected = torch.nn.Dropout(0.5).train()(torch.ones(4, 8))
    torch.manual_seed(5)
    torch.testing.assert_close(BatchDropout(0.5).train()(torch.ones(4, 8)), expected, rtol=0, atol=0)


def test_the_mlp_head_and_salad_drop_out_by_the_global_batch():
    torch.manual_seed(0)
    head = MLPHead(8, hidden_dims=[16, 12], output_dim=4, dropout=0.3).train()
    apart, together = _apart_and_together(head, torch.randn(6, 8))
    torch.testing.assert_close(apart, together)
    torch.manual_seed(0)
    salad = SALAD(32, num_clusters=4, cluster_dim=8, token_dim=16, dropout=0.3).train()
    tokens = torch.randn(6, 32, 4, 4)

    def describe(grid: torch.Tensor) -> torch.Tensor:
        no_registers = grid.new_zeros(len(grid), 0, grid.shape[1])
        return salad.aggregate(BackboneTokens(grid.mean(dim=(2, 3)), no_registers, grid)).descriptors

    apart, together = _apart_and_together(describe, tokens)
    torch.testing.assert_close(apart, together)
    salad.eval()
    undropped = describe(tokens)
    assert not torch.allclose(together, undropped[[*RANKS[0], *RANKS[1]]], atol=1e-3)  # dropout did act
