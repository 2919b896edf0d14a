"""The released SALAD and BoQ layouts (key names and shapes of released_manifest.json) load strictly."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dinov2.hub.backbones import dinov2_vits14
from dinov2.models import DinoVisionTransformer
from dinov2.utils.errors import InputError
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.presets import preset_options
from dinov2_vpr.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from dinov2_vpr.models import load_released_model
from dinov2_vpr.models.released import RELEASED_LAYOUTS, convert_released_state_dict

MANIFEST_ENTRIES = {"salad": "salad", "boq": "boq_dinov2"}


@pytest.fixture(scope="module")
def manifest(vpr_methods_dir) -> dict:
    return json.loads((vpr_methods_dir / "released_manifest.json").read_text())


def meta_state_dict(manifest: dict, method: str) -> dict[str, torch.Tensor]:
    """The released file's keys and shapes as meta tensors (no weights)."""
    shapes = manifest[MANIFEST_ENTRIES[method]]["state_dict"]
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.mark.parametrize("method", sorted(MANIFEST_ENTRIES))
def test_released_layout_loads_strictly_on_meta(manifest, method):
    entry = manifest[MANIFEST_ENTRIES[method]]
    state = meta_state_dict(manifest, method)
    model = load_released_model(method, state)
    prefix = RELEASED_LAYOUTS[method].backbone_prefix
    expected = {
        ("backbone." + key.removeprefix(prefix) if key.startswith(prefix) else key): shape
        for key, shape in entry["state_dict"].items()
    }
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == expected
    assert set(model.state_dict()) == set(convert_released_state_dict(method, state))
    unused = {"backbone." + key.removeprefix(prefix) for key in entry["keys_unused_in_forward"]}
    assert unused <= set(model.state_dict())  # accepted: in the file and in the model
    assert model.output_dim == entry["descriptor_dim"]
    assert sum(p.numel() for p in model.aggregator.parameters()) == entry["aggregator_param_count"]
    assert model.trainable_blocks == RELEASED_LAYOUTS[method].trainable_blocks
    assert not model.training
    assert all(value.is_meta for value in model.state_dict().values())


def test_lightning_wrapper_and_smaller_salad_variant(manifest):
    state = meta_state_dict(manifest, "salad")
    state["aggregator.score.3.weight"] = torch.empty(16, 512, 1, 1, device="meta")
    state["aggregator.score.3.bias"] = torch.empty(16, device="meta")
    state["aggregator.cluster_features.3.weight"] = torch.empty(32, 512, 1, 1, device="meta")
    state["aggregator.cluster_features.3.bias"] = torch.empty(32, device="meta")
    model = load_released_model("salad", {"state_dict": state, "epoch": 3})
    assert (model.aggregator.num_clusters, model.aggregator.cluster_dim) == (16, 32)
    assert model.output_dim == 256 + 16 * 32


@pytest.mark.parametrize("method", sorted(MANIFEST_ENTRIES))
def test_a_key_more_or_less_is_refused(manifest, method):
    prefix = RELEASED_LAYOUTS[method].backbone_prefix
    state = meta_state_dict(manifest, method)
    del state[f"{prefix}blocks.5.ls1.gamma"]
    state[f"{prefix}extra"] = torch.empty(3, device="meta")
    with pytest.raises(
        InputError, match=r"1 missing keys: backbone.blocks.5.ls1.gamma\n.*1 unexpected keys: backbone.extra"
    ):
        load_released_model(method, state)


def test_wrong_files_say_what_would_fit(manifest, vpr_methods_dir, tmp_path):
    with pytest.raises(InputError, match="layout of dino_salad.ckpt: use method='salad'"):
        load_released_model("boq", meta_state_dict(manifest, "salad"))
    with pytest.raises(InputError, match="layout of dinov2_12288.pth: use method='boq'"):
        load_released_model("salad", meta_state_dict(manifest, "boq"))
    with torch.device("meta"):
        small = dinov2_vits14(pretrained=False)
    with pytest.raises(InputError, match=r"shape mismatches.*\n.*the checkpoint is ViT-B/14 \(vitb14\), not ViT-S/14"):
        load_released_model("salad", meta_state_dict(manifest, "salad"), backbone=small)
    plain = {
        k.removeprefix("backbone.model."): v for k, v in meta_state_dict(manifest, "salad").items() if "backbone" in k
    }
    with pytest.raises(InputError, match="plain DINOv2 backbone"):
        load_released_model("salad", plain)
    with pytest.raises(InputError, match="choose one of: salad, boq"):
        load_released_model("netvlad", plain)
    garbage = tmp_path / "dino_salad.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="salad checkpoint .*dino_salad.ckpt"):
        load_released_model("salad", garbage)


def test_loads_a_file_in_the_lightning_layout(vpr_methods_dir, tmp_path):
    fixture = torch.load(vpr_methods_dir / "salad_e2e_tinyvit_224x322.pt", weights_only=True)
    path = tmp_path / "dino_salad.ckpt"
    torch.save({"state_dict": fixture["state_dict"], "epoch": 3, "global_step": 10}, path)
    vit = {key: value for key, value in fixture["constructor"]["vit"].items() if key != "block_fn"}
    model = load_released_model("salad", path, backbone=DinoVisionTransformer(**vit))
    with torch.no_grad():
        assert (model(fixture["inputs"][0]) - fixture["outputs"][0]).abs().max() < 1e-5


def test_method_presets_set_the_official_preprocessing():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = {
        # SALAD: the PIL image resized bilinearly, then made a tensor.
        "salad": to_tensor(image.resize((322, 322), Image.BILINEAR)),
        # BoQ: the tensor resized bicubically with antialiasing.
        "boq": F.interpolate(to_tensor(image)[None], size=(322, 322), mode="bicubic", antialias=True)[0],
    }
    for method, pixels in expected.items():
        cfg = build_vpr_config(None, preset_options(method))
        transform = ImageTransform(cfg.vpr.data.image_size, resize=cfg.vpr.data.resize)
        torch.testing.assert_close(transform(image), (pixels - mean) / std, rtol=0, atol=1e-6)
    settings = [
        ImageTransform(build_vpr_config(None, preset_options(method)).vpr.data.image_size, resize=resize).settings()
        for method, resize in (("salad", "pil_bilinear"), ("boq", "tensor_bicubic_antialias"))
    ]
    assert settings[0] != settings[1], "the resize mode is part of the cache key"


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
