"""The feature cache: hits, invalidation by image and by setting, and survival of an interrupted extraction."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2.models.vision_transformer import DinoVisionTransformer
from dinov2_vpr.data.transforms import ImageTransform
from dinov2_vpr.features.cache import FeatureCache
from dinov2_vpr.features.extract import extract_features
from dinov2_vpr.features.pooling import pooled_encoder


class CountingBackbone(torch.nn.Module):
    """A tiny ViT that counts the images it encodes and can fail after some batches."""

    def __init__(self, fail_after_batches: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vit = DinoVisionTransformer(
            img_size=56, patch_size=14, embed_dim=32, depth=1, num_heads=2, init_values=1.0
        )
        self.encoded = 0
        self.batches = 0
        self.fail_after_batches = fail_after_batches

    def forward_features(self, images):
        if self.fail_after_batches is not None and self.batches >= self.fail_after_batches:
            raise KeyboardInterrupt("simulated interruption")
        self.batches += 1
        self.encoded += len(images)
        return self.vit.forward_features(images)


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(10):
        path = tmp_path / "images" / f"{index:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _extract(backbone, paths, cache_root, settings=None, chunk_size=512):
    transform = ImageTransform((56, 56))
    cache = FeatureCache(cache_root, settings or {"weights": "tiny", "transform": transform.settings()})
    encode = pooled_encoder(backbone, torch.float)
    return extract_features(
        encode, torch.device("cpu"), paths, cache, transform, batch_size=2, chunk_size=chunk_size
    ), cache


def test_second_extraction_encodes_nothing(images, tmp_path):
    first_backbone, second_backbone = CountingBackbone(), CountingBackbone()
    first, _ = _extract(first_backbone, images + images[:3], tmp_path / "cache")  # duplicates encoded once
    second, _ = _extract(second_backbone, images, tmp_path / "cache")
    assert first_backbone.encoded == len(images)
    assert second_backbone.encoded == 0
    torch.testing.assert_close(second["cls"], first["cls"][: len(images)])
    assert first["cls"].shape == (13, 32) and first["patch_gem"].shape == (13, 32)


def test_changed_image_is_encoded_again(images, tmp_path):
    before, _ = _extract(CountingBackbone(), images, tmp_path / "cache")
    Image.new("RGB", (56, 56), (255, 0, 0)).save(images[4])
    os.utime(images[4], ns=(1, 1))  # a different mtime even on coarse file systems
    backbone = CountingBackbone()
    after, _ = _extract(backbone, images, tmp_path / "cache")
    assert backbone.encoded == 1
    assert not torch.allclose(after["cls"][4], before["cls"][4])
    torch.testing.assert_close(after["cls"][:4], before["cls"][:4])


def test_changed_setting_uses_another_cache(images, tmp_path):
    _, cache_a = _extract(CountingBackbone(), images, tmp_path / "cache", {"weights": "a"})
    backbone = CountingBackbone()
    _, cache_b = _extract(backbone, images, tmp_path / "cache", {"weights": "b"})
    assert cache_a.folder != cache_b.folder and backbone.encoded == len(images)


def test_interrupted_extraction_keeps_finished_chunks(images, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _extract(CountingBackbone(fail_after_batches=3), images, tmp_path / "cache", chunk_size=2)
    chunks = list((tmp_path / "cache").glob("*/chunk-*.pt"))
    assert len(chunks) == 3
    assert not list((tmp_path / "cache").glob("*/.*tmp"))  # nothing half-written left behind
    resumed_backbone = CountingBackbone()
    resumed, _ = _extract(resumed_backbone, images, tmp_path / "cache", chunk_size=2)
    assert resumed_backbone.encoded == len(images) - 6
    uninterrupted, _ = _extract(CountingBackbone(), images, tmp_path / "fresh", chunk_size=2)
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name])
