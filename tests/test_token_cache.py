"""The trunk-token cache: round trip, cache + tail = full model, atomic chunks, rows read lazily."""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from dinov2.models import DinoVisionTransformer
from dinov2_vpr.features.token_cache import TokenCache
from dinov2_vpr.models import PlaceModel
from dinov2_vpr.models.aggregators import SALAD

SETTINGS = {"weights": "random", "image_size": [56, 56]}


def _ids(start: int, count: int) -> list[str]:
    return [f"/data/{index}.jpg|100|{index}" for index in range(start, start + count)]


def test_round_trip_over_chunks_and_processes(tmp_path: Path):
    tokens = torch.randn(7, 5, 4)
    cache = TokenCache(tmp_path, SETTINGS, block_index=2)
    assert cache.missing(_ids(0, 7) + _ids(0, 2)) == _ids(0, 7)
    cache.write_chunk(_ids(0, 4), tokens[:4])
    cache.write_chunk(_ids(4, 3), tokens[4:])
    assert cache.missing(_ids(0, 8)) == _ids(7, 1) and len(cache) == 7
    order = [5, 0, 6, 2, 2]
    read = cache.read([_ids(0, 7)[index] for index in order])
    assert read.dtype == torch.float16 and torch.equal(read, tokens[order].half())

    other = TokenCache(tmp_path, SETTINGS, block_index=2)  # another process sees the chunks
    assert torch.equal(other.read(_ids(0, 7)), tokens.half())
    assert len(TokenCache(tmp_path, SETTINGS, block_index=1)) == 0  # keyed by the block index
    assert len(TokenCache(tmp_path, SETTINGS, block_index=2, dtype="fp32")) == 0  # and the storage dtype
    with pytest.raises(KeyError, match="1 images are not in the token cache"):
        cache.read(_ids(6, 2))


@pytest.mark.parametrize("dtype, tolerance", [("fp32", 1e-5), ("fp16", 1e-3)])
def test_cached_trunk_plus_tail_equals_the_full_model(tmp_path: Path, dtype: str, tolerance: float):
    torch.manual_seed(0)
    backbone = DinoVisionTransformer(
        img_size=56, patch_size=14, embed_dim=48, depth=3, num_heads=3, num_register_tokens=2, block_chunks=0
    )
    model = PlaceModel(backbone, SALAD(48, num_clusters=4, cluster_dim=8, token_dim=16), trainable_blocks=1).eval()
    images = torch.randn(3, 3, 56, 70)
    cache = TokenCache(tmp_path, SETTINGS, block_index=2, dtype=dtype)
    trunk = model.forward_trunk(images)
    assert trunk.shape == (3, 1 + 2 + 4 * 5, 48)
    cache.write_chunk(_ids(0, 3), trunk)
    with torch.no_grad():
        cached = model.aggregate(model.forward_tail(cache.read(_ids(0, 3)).float(), (4, 5))).descriptors
        full = model(images)
    assert (cached - full).abs().max().item() < tolerance


def test_an_interrupted_write_leaves_no_partial_chunk(tmp_path: Path, monkeypatch):
    cache = TokenCache(tmp_path, SETTINGS, block_index=2)
    cache.write_chunk(_ids(0, 2), torch.randn(2, 5, 4))

    def save_half(handle, array):
        handle.write(array.tobytes()[: array.nbytes // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", save_half)
    with pytest.raises(KeyboardInterrupt):
        cache.write_chunk(_ids(2, 2), torch.randn(2, 5, 4))
    monkeypatch.undo()
    assert len(list(cache.folder.glob("chunk-*.npy"))) == len(list(cache.folder.glob("chunk-*.json"))) == 1
    assert not list(cache.folder.glob(".*tmp")) and cache.missing(_ids(0, 4)) == _ids(2, 2)
    assert len(TokenCache(tmp_path, SETTINGS, block_index=2)) == 2


def test_reading_maps_chunks_and_copies_only_the_requested_rows(tmp_path: Path):
    chunks, rows, shape = 6, 32, (100, 128)  # chunks of 1.6 MB (fp32)
    writer = TokenCache(tmp_path, SETTINGS, block_index=2, dtype="fp32")
    for chunk in range(chunks):
        writer.write_chunk(_ids(chunk * rows, rows), torch.full((rows, *shape), float(chunk)))
    chunk_bytes = rows * shape[0] * shape[1] * 4
    wanted = [_ids(chunk * rows + 3, 1)[0] for chunk in range(chunks)]

    tracemalloc.start()
    try:
        cache = TokenCache(tmp_path, SETTINGS, block_index=2, dtype="fp32")
        tokens = cache.read(wanted)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert torch.equal(tokens[:, 0, 0], torch.arange(chunks, dtype=torch.float32))
    assert peak < chunk_bytes / 2, f"reading {chunks} rows allocated {peak} bytes"
    chunk_name = next(cache.folder.glob("chunk-*.npy")).name
    assert isinstance(cache.open_chunk(chunk_name), np.memmap)
