"""The backbone reproduces the official DINOv2 outputs saved in ../shared/fixtures/dinov2_reference."""

import json

import pytest
import torch

from dinov2.configs import load_and_merge_config
from dinov2.models import build_model_from_cfg
from dinov2.models.vision_transformer import DinoVisionTransformer
from dinov2.utils.utils import load_pretrained_weights

CASES = ["vit_mlp", "vit_reg4", "vit_swiglu"]
TOLERANCE = 1e-4
FEATURE_KEYS = ["x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"]
EVAL_CONFIGS = {
    "dinov2_vits14": "vits14",
    "dinov2_vitb14": "vitb14",
    "dinov2_vitl14": "vitl14",
    "dinov2_vitg14": "vitg14",
}


def _max_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item() if expected.numel() else 0.0


def _outputs_max_difference(model: DinoVisionTransformer, case: dict) -> dict[str, float]:
    inputs, expected = case["inputs"], case["outputs"]
    differences = {}
    with torch.no_grad():
        features = model.forward_features(inputs["a"])
        masked = model.forward_features(inputs["a"], masks=case["masks_a"])
        for key in FEATURE_KEYS:
            differences[f"forward_features_a.{key}"] = _max_difference(
                features[key], expected["forward_features_a"][key]
            )
            differences[f"masked.{key}"] = _max_difference(masked[key], expected["forward_features_a_masked"][key])
        assert torch.equal(masked["masks"], case["masks_a"])
        differences["forward_b"] = _max_difference(model(inputs["b"]), expected["forward_b"])
        differences["forward_c"] = _max_difference(model(inputs["c"]), expected["forward_c"])
        layers_a = model.get_intermediate_layers(inputs["a"], n=2, reshape=True, return_class_token=True, norm=True)
        assert len(layers_a) == len(expected["intermediate_a"])
        for index, ((patches, cls), (ref_patches, ref_cls)) in enumerate(zip(layers_a, expected["intermediate_a"])):
            differences[f"intermediate_a[{index}].patches"] = _max_difference(patches, ref_patches)
            differences[f"intermediate_a[{index}].cls"] = _max_difference(cls, ref_cls)
        layers_b = model.get_intermediate_layers(
            inputs["b"], n=[0, 2], reshape=False, return_class_token=False, norm=False
        )
        assert len(layers_b) == len(expected["intermediate_b"])
        for index, (patches, ref_patches) in enumerate(zip(layers_b, expected["intermediate_b"])):
            differences[f"intermediate_b[{index}]"] = _max_difference(patches, ref_patches)
    return differences


@pytest.fixture(scope="module", params=CASES)
def case(request, dinov2_reference_dir):
    data = torch.load(dinov2_reference_dir / f"{request.param}.pt", weights_only=True)
    data["name"] = request.param
    data["teacher_checkpoint"] = dinov2_reference_dir / f"{request.param}_teacher_checkpoint.pth"
    return data


def test_state_dict_reproduces_official_outputs(case):
    model = DinoVisionTransformer(**case["constructor"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    differences = _outputs_max_difference(model, case)
    worst = max(differences, key=differences.get)
    print(f"{case['name']}: largest absolute difference {differences[worst]:.2e} ({worst})")
    assert differences[worst] <= TOLERANCE, differences


def test_teacher_checkpoint_loads_to_the_same_model(case):
    model = DinoVisionTransformer(**case["constructor"]).eval()
    load_pretrained_weights(model, str(case["teacher_checkpoint"]), checkpoint_key="teacher")
    loaded = model.state_dict()
    assert loaded.keys() == case["state_dict"].keys()
    for key, value in case["state_dict"].items():
        assert torch.equal(loaded[key], value), key
    assert max(_outputs_max_difference(model, case).values()) <= TOLERANCE


def test_a_changed_weight_changes_the_outputs(case):
    """The comparison is sensitive: one perturbed gamma breaks parity."""
    model = DinoVisionTransformer(**case["constructor"]).eval()
    state = dict(case["state_dict"])
    state["blocks.1.ls2.gamma"] = state["blocks.1.ls2.gamma"] + 0.01
    model.load_state_dict(state, strict=True)
    assert max(_outputs_max_difference(model, case).values()) > TOLERANCE


@pytest.mark.parametrize("official_name", sorted(EVAL_CONFIGS))
@pytest.mark.parametrize("registers", [False, True])
def test_eval_configs_build_the_official_architectures(official_name, registers, dinov2_reference_dir):
    manifest = json.loads((dinov2_reference_dir / "official_architectures.json").read_text())
    expected = manifest[official_name + ("_reg" if registers else "")]
    cfg = load_and_merge_config(f"eval/{EVAL_CONFIGS[official_name]}{'_reg4' if registers else ''}_pretrain")
    with torch.device("meta"):
        model, embed_dim = build_model_from_cfg(cfg, only_teacher=True)
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert shapes == expected["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == expected["num_params"]
    assert embed_dim == shapes["cls_token"][-1]
