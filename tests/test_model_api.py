"""The Python API: load a model once, describe PIL images, files or tensors, compare two images."""

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2.utils.errors import InputError
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.images import list_images
from dinov2_vpr.features.descriptors import describe_image_files
from dinov2_vpr.models.aggregators import Pooled
from dinov2_vpr.models.descriptor import load_place_model
from dinov2_vpr.models.descriptor_config import configure_descriptor
from dinov2_vpr.models.heads import MLPHead

from .conftest import REPO_ROOT, TINY_MODEL_OPTS
from .trained_head import HEAD_OPTS, train_tiny_head

CONFIG_FILE = REPO_ROOT / "dinov2/configs/eval/vits14_pretrain.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained_head")
    head_file = train_tiny_head(root)
    return head_file, list_images(root / "data")[:6]


@pytest.fixture(scope="module")
def gem_model():
    return load_place_model(config_file=CONFIG_FILE, opts=TINY_MODEL_OPTS, random_backbone=True, zero_shot="gem")


def test_every_input_form_gives_the_same_unit_descriptors(gem_model, trained):
    paths = trained[1][:3]
    pictures = [Image.open(path) for path in paths]
    tensors = torch.stack([gem_model.transform(picture) for picture in pictures])
    from_pictures = gem_model.describe(pictures, batch_size=2)
    assert from_pictures.shape == (3, gem_model.output_dim) == (3, 384)
    torch.testing.assert_close(from_pictures.norm(dim=1), torch.ones(3))
    for other in (gem_model.describe(paths), gem_model.describe(tensors), gem_model.describe(list(tensors))):
        torch.testing.assert_close(other, from_pictures, rtol=0, atol=1e-6)
    torch.testing.assert_close(gem_model.describe(pictures[1]), from_pictures[1:2], rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(gem_model(tensors), from_pictures, rtol=0, atol=1e-6)


def test_gem_descriptor_against_pooling_the_tokens_by_hand(gem_model, trained):
    images = torch.stack([gem_model.transform(Image.open(path)) for path in trained[1][:2]])
    with torch.no_grad():
        patches = gem_model.backbone.forward_features(images)["x_norm_patchtokens"].numpy().astype(np.float64)
    gem = (np.clip(patches, 1e-6, None) ** 3).mean(axis=1) ** (1 / 3)
    expected = gem / np.linalg.norm(gem, axis=1, keepdims=True)
    np.testing.assert_allclose(gem_model.describe(images).numpy(), expected, atol=1e-5)


def test_similarity_is_the_cosine_of_the_descriptors(gem_model, trained):
    first, second = (Image.open(path) for path in trained[1][:2])
    descriptors = gem_model.describe([first, second]).numpy().astype(np.float64)
    assert gem_model.similarity(first, second) == pytest.approx(float(descriptors[0] @ descriptors[1]), abs=1e-6)
    assert gem_model.similarity(first, first) == pytest.approx(1.0, abs=1e-6)


def test_trained_head_matches_the_cached_extraction(trained, tmp_path):
    head_file, paths = trained
    model = load_place_model(head=head_file.parent, config_file=CONFIG_FILE, opts=HEAD_OPTS, random_backbone=True)
    assert isinstance(model.model.head, MLPHead) and model.output_dim == 16
    assert isinstance(model.model.aggregator, Pooled) and model.model.aggregator.input_name == "gem"
    saved = torch.load(head_file, weights_only=True)["head"]
    for key, value in model.model.head.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    cfg = build_vpr_config(str(CONFIG_FILE), HEAD_OPTS)
    cached = describe_image_files(cfg, None, configure_descriptor(cfg, head_file, None), paths, tmp_path)
    np.testing.assert_allclose(model.describe(paths).numpy(), cached, atol=1e-5)
    assert model.settings["head"] == str(head_file.resolve()) and model.settings["zero_shot"] is None


def test_head_with_another_image_size_is_rejected(trained):
    with pytest.raises(ValueError, match=r"vpr.data.image_size differs from the training of .*head.pth"):
        load_place_model(
            head=trained[0],
            config_file=CONFIG_FILE,
            opts=[*HEAD_OPTS, "vpr.data.image_size=[70,70]"],
            random_backbone=True,
        )


def test_bad_arguments_are_explained(gem_model, trained):
    with pytest.raises(ValueError, match="pretrained_weights is required"):
        load_place_model(config_file=CONFIG_FILE)
    with pytest.raises(ValueError, match="either a trained head"):
        load_place_model(head=trained[0], zero_shot="cls", config_file=CONFIG_FILE, random_backbone=True)
    with pytest.raises(ValueError, match="Zero-shot pooling 'max' is unknown"):
        load_place_model(zero_shot="max", config_file=CONFIG_FILE, random_backbone=True)
    with pytest.raises(TypeError, match=r"Cannot describe \(56, 56\)"):
        gem_model.describe(torch.zeros(56, 56))
    with pytest.raises(InputError, match="Cannot read image"):
        gem_model.describe(trained[0])  # a .pth is no image
