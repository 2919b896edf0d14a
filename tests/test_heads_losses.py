"""Every registered head and loss; the registry's errors."""

import pytest
import torch

import dinov2_vpr.models.heads  # noqa: F401  (registers the heads)
import dinov2_vpr.training.losses  # noqa: F401  (registers the pair losses)
import dinov2_vpr.training.place_losses  # noqa: F401  (registers the multi-similarity loss)
from dinov2.utils.errors import InputError
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.image_table import PairIndex
from dinov2_vpr.models import build_head
from dinov2_vpr.registry import HEADS, LOSSES
from dinov2_vpr.training.pair_learners import head_learner
from dinov2_vpr.training.trainer import build_loss, train_on_pairs
from dinov2_vpr.verification.evaluate import cosine_scores, describe_rows

HEAD_NAMES = sorted(name for name, _ in HEADS)
LOSS_NAMES = sorted(name for name, _ in LOSSES)
PAIR_LOSS_NAMES = ["ContrastiveLoss", "ScaledCosineBCELoss"]  # on pair similarities; the rest on place batches


def _separable_pairs(num_places: int = 12, dim: int = 24):
    """Two noisy views of each place: positives are views of one place, negatives of two."""
    torch.manual_seed(0)
    places = torch.randn(num_places, dim)
    features = torch.cat([places + 0.3 * torch.randn_like(places), places + 0.3 * torch.randn_like(places)])
    query = torch.arange(num_places).repeat(2)
    reference = torch.cat(
        [torch.arange(num_places) + num_places, (torch.arange(num_places) + 1) % num_places + num_places]
    )
    labels = torch.cat([torch.ones(num_places), torch.zeros(num_places)])
    return features, PairIndex(query, reference, labels)


def test_registries_hold_the_documented_names():
    assert HEAD_NAMES == ["MLPHead"]
    assert LOSS_NAMES == sorted([*PAIR_LOSS_NAMES, "MultiSimilarityLoss"])


@pytest.mark.parametrize("head_name", HEAD_NAMES)
@pytest.mark.parametrize("input_name,width", [("cls", 384), ("cls+patch", 768), ("gem", 384)])
def test_every_head_gives_unit_descriptors(head_name, input_name, width):
    cfg = build_vpr_config(None, [f"vpr.head.name={head_name}", f"vpr.head.input={input_name}"])
    head = build_head(cfg, 384).eval()
    descriptors = head(torch.randn(5, width))
    torch.testing.assert_close(descriptors.norm(dim=-1), torch.ones(5))


@pytest.mark.parametrize("loss_name", PAIR_LOSS_NAMES)
def test_every_pair_loss_trains_a_head_that_separates_places(loss_name, tmp_path):
    features, pairs = _separable_pairs()
    opts = [
        f"vpr.loss.name={loss_name}",
        "vpr.head.hidden_dims=[32]",
        "vpr.head.output_dim=16",
        "vpr.train.epochs=40",
        "vpr.train.batch_size=8",
        "vpr.head.dropout=0.0",
        "vpr.train.lr=0.003",
    ]
    cfg = build_vpr_config(None, opts)
    result = train_on_pairs(
        cfg, head_learner(cfg, features, 24, torch.arange(len(features)), None), pairs, pairs, tmp_path
    )
    head = build_head(cfg, 24)
    head.load_state_dict(result.state)
    scores = torch.from_numpy(cosine_scores(describe_rows(head, features), pairs))
    assert scores[pairs.labels == 1].min() > scores[pairs.labels == 0].max()
    assert result.best_average_precision == pytest.approx(1.0)


def test_pair_losses_pull_positives_and_push_negatives():
    similarity = torch.tensor([0.9, 0.2, 0.9, 0.2])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    for name in PAIR_LOSS_NAMES:
        loss = build_loss(build_vpr_config(None, [f"vpr.loss.name={name}", "vpr.loss.margin=0.6"]))
        assert loss.margin == 0.6  # each takes its own keys of vpr.loss (scale is ScaledCosineBCELoss's only)
        values = loss(similarity, labels)
        assert values[0] < values[1] and values[3] < values[2]


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(InputError, match=r"vpr.head.name='Transformer' is not registered; choose one of: MLPHead"):
        build_head(build_vpr_config(None, ["vpr.head.name=Transformer"]), 384)
    with pytest.raises(InputError, match="vpr.loss.name='Triplet'"):
        build_loss(build_vpr_config(None, ["vpr.loss.name=Triplet"]))
    with pytest.raises(
        InputError, match="'MultiSimilarityLoss' trains on place batches.*ContrastiveLoss, ScaledCosineBCELoss"
    ):
        build_loss(build_vpr_config(None, ["vpr.loss.name=MultiSimilarityLoss"]))
    with pytest.raises(InputError, match="vpr.head.input='patch'"):
        build_head(build_vpr_config(None, ["vpr.head.input=patch"]), 384)
