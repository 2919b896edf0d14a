"""Building blocks: the fused attention kernel against plain softmax attention, stochastic depth, SwiGLU."""

import subprocess
import sys

import pytest
import torch

from dinov2.layers import Attention, PatchEmbed, SwiGLUFFNFused, reference_attention, swiglu_hidden_features
from dinov2.layers.drop_path import drop_path
from dinov2.models.vision_transformer import DinoVisionTransformer
from dinov2.utils.utils import convert_checkpoint


@pytest.mark.parametrize("tokens,dim,heads", [(5, 32, 4), (197, 64, 8), (1 + 4 + 90, 48, 3)])
def test_fused_attention_matches_softmax_attention(tokens, dim, heads):
    torch.manual_seed(0)
    module = Attention(dim, num_heads=heads, qkv_bias=True).eval()
    x = torch.randn(2, tokens, dim)
    with torch.no_grad():
        fused, reference = module(x), reference_attention(x, module)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


def test_reference_attention_is_not_trivially_equal():
    """A wrong head split must be caught by the comparison above."""
    torch.manual_seed(0)
    module = Attention(32, num_heads=4, qkv_bias=True).eval()
    other = Attention(32, num_heads=2, qkv_bias=True).eval()
    other.load_state_dict(module.state_dict())
    x = torch.randn(1, 9, 32)
    with torch.no_grad():
        assert (module(x) - reference_attention(x, other)).abs().max() > 1e-3


def test_importing_the_backbone_prints_no_warnings():
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import dinov2.models, dinov2.hub.backbones, dinov2.eval.setup"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_xformers_can_be_disabled_by_environment():
    code = "from dinov2.layers import xformers_enabled; print(xformers_enabled())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"XFORMERS_DISABLED": "1", "PATH": ""}
    )
    assert result.stdout.strip() == "False"


def test_swiglu_width_matches_vit_g():
    assert swiglu_hidden_features(1536 * 4) == 4096
    layer = SwiGLUFFNFused(64, 256)
    assert layer.w12.out_features == 2 * 176 and layer.w3.in_features == 176


def test_drop_path_only_in_training():
    x = torch.ones(1000, 4)
    assert torch.equal(drop_path(x, 0.5, training=False), x)
    dropped = drop_path(x, 0.5, training=True)
    kept = (dropped[:, 0] > 0).float().mean().item()
    assert 0.4 < kept < 0.6 and torch.allclose(dropped[dropped > 0], torch.full_like(dropped[dropped > 0], 2.0))


def test_patch_embed_rejects_sides_that_are_not_multiples():
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        PatchEmbed(patch_size=14, embed_dim=8)(torch.zeros(1, 3, 30, 28))


def test_any_multiple_of_the_patch_size_works_and_chunked_blocks_agree():
    torch.manual_seed(0)
    kwargs = dict(img_size=518, patch_size=14, embed_dim=32, depth=4, num_heads=2, init_values=1.0)
    plain = DinoVisionTransformer(block_chunks=0, **kwargs).eval()
    chunked = DinoVisionTransformer(block_chunks=2, **kwargs).eval()
    assert "blocks.1.3.mlp.fc1.weight" in chunked.state_dict()
    plain_state = plain.state_dict()
    chunked_keys = list(chunked.state_dict())
    plain_keys = list(convert_checkpoint(dict.fromkeys(chunked_keys)))
    chunked.load_state_dict({chunked_key: plain_state[key] for chunked_key, key in zip(chunked_keys, plain_keys)})
    x = torch.randn(1, 3, 70, 126)
    with torch.no_grad():
        out = plain.forward_features(x)
        assert out["x_norm_patchtokens"].shape == (1, 5 * 9, 32)
        torch.testing.assert_close(chunked(x), plain(x))
        layers = chunked.get_intermediate_layers(x, n=2, reshape=True)
        assert [tuple(t.shape) for t in layers] == [(1, 32, 5, 9)] * 2
