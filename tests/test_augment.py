"""The batched training augmentation: shapes, that it changes images, determinism under a seed."""

import pytest
import torch

from dinov2_vpr.data.augment import TrainAugmentation
from dinov2_vpr.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def _images() -> torch.Tensor:
    return torch.rand(6, 3, 40, 50, generator=torch.Generator().manual_seed(0))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("group_size", [None, 1, 4])
def test_shapes_changes_and_seeded_determinism(group_size):
    augment = TrainAugmentation((28, 42), group_size=group_size)
    images = _images()
    torch.manual_seed(1)
    first = augment(images)
    assert first.shape == (6, 3, 28, 42) and first.dtype == torch.float32
    torch.manual_seed(1)
    assert torch.equal(augment(images), first)
    torch.manual_seed(2)
    assert not torch.equal(augment(images), first)
    # Not just the resize and the normalisation.
    plain = _normalise(torch.nn.functional.interpolate(images, (28, 42), mode="bilinear", antialias=True))
    assert (first - plain).abs().mean() > 0.05


def test_uint8_input_and_no_resize():
    augment = TrainAugmentation((40, 50))
    images = (_images() * 255).round().to(torch.uint8)
    torch.manual_seed(0)
    from_uint8 = augment(images)
    torch.manual_seed(0)
    assert torch.allclose(from_uint8, augment(images.float() / 255.0))
    assert from_uint8.shape == (6, 3, 40, 50)


def test_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        TrainAugmentation((28, 28))(torch.rand(3, 28, 28))
