"""Image to patch tokens."""

from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and project each to ``embed_dim``.

    Args:
        img_size: nominal square image side; sets ``num_patches`` for the position embedding.
        patch_size: side of a square patch in pixels.
        in_chans: input channels.
        embed_dim: output token width.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.patches_resolution = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, C, H, W)`` to ``(B, H/p * W/p, embed_dim)``; sides must be multiples of the patch size."""
        height, width = x.shape[-2:]
        patch = self.patch_size[0]
        if height % patch or width % patch:
            raise ValueError(
                f"Input of {height}x{width} pixels is not a multiple of the patch size {patch}: "
                f"resize or crop it to multiples of {patch} (e.g. {height // patch * patch}x{width // patch * patch})."
            )
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm(x)
