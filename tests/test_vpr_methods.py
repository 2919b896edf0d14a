"""SALAD and BoQ against the official modules' outputs (../shared/fixtures/vpr_methods), and the place model."""

from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinov2.models import DinoVisionTransformer
from dinov2.utils.errors import InputError
from dinov2_vpr.features.pooling import backbone_features
from dinov2_vpr.models import PlaceModel, load_released_model
from dinov2_vpr.models.aggregators import CLS, SALAD, BoQ, GeM
from dinov2_vpr.models.aggregators.salad import log_sinkhorn
from dinov2_vpr.models.heads import MLPHead
from dinov2_vpr.registry import AGGREGATORS

ATOL = 1e-5
SALAD_FILES = ["salad_agg_reduced_16x23.pt", "salad_agg_reduced_3x3_edge.pt"]
E2E_FILES = {"salad": "salad_e2e_tinyvit_224x322.pt", "boq": "boq_e2e_tinyvit_224x322.pt"}


@cache
def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def max_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


def build(cls, fixture: dict) -> torch.nn.Module:
    module = cls(**fixture["constructor"])
    module.load_state_dict(fixture["state_dict"], strict=True)
    return module.eval()


def tiny_vit(fixture: dict) -> DinoVisionTransformer:
    """The end-to-end files' tiny ViT (``block_fn`` only describes the official class used)."""
    return DinoVisionTransformer(**{k: v for k, v in fixture["constructor"]["vit"].items() if k != "block_fn"})


def check_gradients(module: torch.nn.Module, inputs: list, grad_check: dict, descriptors_of) -> None:
    """Eval-mode gradients of ``sum(descriptors * output_weights)`` for every parameter and input."""
    inputs = [tensor.clone().requires_grad_() for tensor in inputs]
    (descriptors_of(module(*inputs)) * grad_check["output_weights"]).sum().backward()
    params = dict(module.named_parameters())
    assert set(params) == set(grad_check["param_grads"])
    for name, expected in grad_check["param_grads"].items():
        assert max_diff(params[name].grad, expected) < ATOL, name
    for tensor, expected in zip(inputs, grad_check["input_grads"], strict=True):
        assert max_diff(tensor.grad, expected) < ATOL


@pytest.mark.parametrize("name", SALAD_FILES)
def test_salad_aggregator_matches_official(vpr_methods_dir, name):
    fixture = _load(vpr_methods_dir / name)
    salad = build(SALAD, fixture)
    features, cls_token = fixture["inputs"]
    expected = fixture["intermediates"]
    with torch.no_grad():
        assert max_diff(salad(features, cls_token), fixture["outputs"][0]) < ATOL
        assert max_diff(salad((features, cls_token)), fixture["outputs"][0]) < ATOL  # the official call form
        assert max_diff(salad(features[:1], cls_token[:1]), fixture["outputs"][0][:1]) < ATOL  # batch size 1
        assert max_diff(salad.token_features(cls_token), expected["token_features"]) < ATOL
        assert max_diff(salad.cluster_features(features), expected["cluster_features"]) < ATOL
        scores = salad.score(features)
        assert max_diff(scores, expected["score"]) < ATOL
        log_plan = log_sinkhorn(scores.flatten(2), salad.dust_bin)
        assert max_diff(log_plan, expected["log_matching_probs_with_dustbin_row"]) < ATOL
    assert salad.output_dim == fixture["outputs"][0].shape[1]


def test_salad_gradients_match_official(vpr_methods_dir):
    fixture = _load(vpr_methods_dir / "salad_agg_reduced_16x23.pt")
    check_gradients(build(SALAD, fixture), fixture["inputs"], fixture["grad_check"], lambda out: out)


def test_salad_needs_more_patches_than_clusters():
    salad = SALAD(64, num_clusters=8, cluster_dim=16, token_dim=32).eval()
    with pytest.raises(InputError, match=r"2x4 grid of 8.*42x42 pixels \(a 3x3 grid\)"):
        salad(torch.randn(1, 64, 2, 4), torch.randn(1, 64))
    assert salad(torch.randn(1, 64, 1, 9), torch.randn(1, 64)).shape == (1, 160)


def test_boq_aggregator_matches_official(vpr_methods_dir):
    fixture = _load(vpr_methods_dir / "boq_agg_reduced_16x23.pt")
    boq = build(BoQ, fixture)
    (features,) = fixture["inputs"]
    expected, expected_maps = fixture["outputs"]
    with torch.no_grad():
        descriptors, attention_maps = boq(features)
        single, single_maps = boq(features[:1])  # batch size 1
    assert max_diff(descriptors, expected) < ATOL
    assert max_diff(single, expected[:1]) < ATOL
    assert len(attention_maps) == len(expected_maps) == 2
    for actual, actual_single, wanted in zip(attention_maps, single_maps, expected_maps):
        assert max_diff(actual, wanted) < ATOL
        assert max_diff(actual_single, wanted[:1]) < ATOL
    descriptors, _ = boq(features)  # with gradients: the Python path rather than the fused one
    assert max_diff(descriptors, expected) < ATOL
    assert boq.output_dim == expected.shape[1]


def test_boq_gradients_match_official(vpr_methods_dir):
    fixture = _load(vpr_methods_dir / "boq_agg_reduced_16x23.pt")
    grad_check = _load(vpr_methods_dir / "boq_agg_reduced_16x23_grad.pt")["grad_check"]
    check_gradients(build(BoQ, fixture), fixture["inputs"], grad_check, lambda out: out[0])


@pytest.mark.parametrize("method", sorted(E2E_FILES))
def test_released_model_end_to_end_matches_official(vpr_methods_dir, method):
    fixture = _load(vpr_methods_dir / E2E_FILES[method])
    model = load_released_model(method, fixture["state_dict"], backbone=tiny_vit(fixture))
    (images,) = fixture["inputs"]
    expected = fixture["outputs"][0]
    with torch.no_grad():
        assert max_diff(model(images), expected) < ATOL  # the acceptance call
        assert max_diff(model(images[:1]), expected[:1]) < ATOL
        tokens = model.forward_tail(model.forward_trunk(images), model.grid_size(images))
        aggregation = model.aggregate(tokens)
    assert max_diff(tokens.patch_grid, fixture["intermediates"]["backbone_features"]) < ATOL
    assert max_diff(aggregation.descriptors, expected) < ATOL
    if method == "salad":
        assert max_diff(tokens.cls_token, fixture["intermediates"]["backbone_cls_token"]) < ATOL
        assert aggregation.attention_maps == ()
    else:
        for actual, wanted in zip(aggregation.attention_maps, fixture["outputs"][1], strict=True):
            assert max_diff(actual, wanted) < ATOL


@pytest.fixture(scope="module")
def tiny_backbone() -> DinoVisionTransformer:
    torch.manual_seed(0)
    return DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=48, depth=3, num_heads=3, block_chunks=0)


def test_every_registered_aggregator_gives_unit_descriptors(tiny_backbone):
    assert {"SALAD", "BoQ", "CLS", "GeM"} <= {name for name, _ in AGGREGATORS}
    images = torch.randn(2, 3, 126, 140)  # a 9x10 grid: more patches than SALAD's 64 clusters
    for name, aggregator_class in AGGREGATORS:
        model = PlaceModel(tiny_backbone, aggregator_class(tiny_backbone.embed_dim)).eval()
        with torch.no_grad():
            descriptors = model(images)
        assert descriptors.shape == (2, model.output_dim), name
        assert torch.allclose(descriptors.norm(dim=-1), torch.ones(2)), name


def test_zero_shot_aggregators_match_the_pooled_features(tiny_backbone):
    images = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        pooled = backbone_features(tiny_backbone, images)
        for aggregator, feature in ((CLS(48), "cls"), (GeM(48), "patch_gem")):
            descriptors = PlaceModel(tiny_backbone, aggregator).eval()(images)
            assert max_diff(descriptors, F.normalize(pooled[feature], dim=-1)) < 1e-6


@pytest.mark.parametrize(
    "make_aggregator", [lambda: SALAD(64, num_clusters=4, cluster_dim=8, token_dim=16), lambda: BoQ(64, 64, 4, 2, 4)]
)
def test_only_the_tail_and_aggregator_train(make_aggregator):
    backbone = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=3, num_heads=2, block_chunks=0)
    aggregator = make_aggregator()
    model = PlaceModel(backbone, aggregator, trainable_blocks=1)
    model(torch.randn(2, 3, 56, 56)).sum().backward()
    trained = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    expected = {name for name, _ in model.named_parameters() if name.startswith(("backbone.blocks.2.", "aggregator."))}
    if aggregator.final_norm:
        expected |= {"backbone.norm.weight", "backbone.norm.bias"}
    assert trained == expected == {name for name, p in model.named_parameters() if p.requires_grad}
    frozen = PlaceModel(backbone, aggregator, trainable_blocks=0)
    assert not any(parameter.requires_grad for parameter in frozen.backbone.parameters())


def test_place_model_head_hook(tiny_backbone):
    head = MLPHead(48, hidden_dims=[16], output_dim=8)
    model = PlaceModel(tiny_backbone, CLS(48), head=head).eval()
    assert model.output_dim == 8
    assert model(torch.randn(3, 3, 28, 42)).shape == (3, 8)


def test_place_model_names_the_image_size_when_the_grid_is_too_small(vpr_methods_dir):
    fixture = _load(vpr_methods_dir / E2E_FILES["salad"])
    model = load_released_model("salad", fixture["state_dict"], backbone=tiny_vit(fixture))
    with pytest.raises(InputError, match=r"28x56 pixel images give a 2x4 grid of 8.*42x42 pixels"):
        model(torch.randn(1, 3, 28, 56))
