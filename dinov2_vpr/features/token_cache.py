"""On-disk cache of trunk tokens: each image's backbone tokens at the output of the last frozen block.

One folder per setting (as :class:`~dinov2_vpr.features.cache.FeatureCache`, plus the block
index and the storage dtype), holding chunks: ``chunk-<id>.npy`` (``(N, T, C)`` tokens, written
atomically and read memory-mapped) beside ``chunk-<id>.json`` (the N image identities, written
first). A chunk exists once its ``.npy`` does, so an interrupted write leaves no partial chunk.
Reading maps a chunk and copies only the requested rows: memory stays flat in the dataset size.
"""

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dinov2_vpr.features.cache import settings_digest
from dinov2_vpr.io import atomic_write, atomic_write_text

STORAGE_DTYPES = {"fp16": np.float16, "fp32": np.float32}


class TokenCache:
    """Trunk tokens of the images encoded so far under one setting.

    Args:
        root: the cache root.
        settings: everything that determines the tokens (weights, model config, preprocessing,
            precision), as for the feature cache.
        block_index: the first tail block: the tokens are the output of blocks ``0 .. block_index - 1``.
        dtype: storage dtype, ``"fp16"`` (default) or ``"fp32"``.
    """

    def __init__(self, root: str | Path, settings: dict, block_index: int, dtype: str = "fp16") -> None:
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"Token cache dtype must be one of {list(STORAGE_DTYPES)}, got {dtype!r}")
        self.dtype = STORAGE_DTYPES[dtype]
        keyed = {**settings, "trunk_tokens": {"block_index": block_index, "dtype": dtype}}
        self.folder = Path(root) / settings_digest(keyed)
        self.folder.mkdir(parents=True, exist_ok=True)
        settings_file = self.folder / "settings.json"
        if not settings_file.exists():
            atomic_write_text(settings_file, json.dumps(keyed, indent=2, sort_keys=True))
        self._rows: dict[str, tuple[str, int]] = {}  # identity -> (chunk file name, row)
        self.refresh()

    def refresh(self) -> None:
        """Index chunks written since the last call (by this or other processes)."""
        indexed = {chunk for chunk, _ in self._rows.values()}
        for tokens_file in sorted(self.folder.glob("chunk-*.npy")):
            if tokens_file.name not in indexed:
                identities = json.loads(tokens_file.with_suffix(".json").read_text(encoding="utf-8"))
                self._index(tokens_file.name, identities)

    def _index(self, chunk: str, identities: Sequence[str]) -> None:
        for row, identity in enumerate(identities):
            self._rows[identity] = (chunk, row)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, identity: str) -> bool:
        return identity in self._rows

    def missing(self, identities: Sequence[str]) -> list[str]:
        """The identities not cached yet, in order, without repeats."""
        return [identity for identity in dict.fromkeys(identities) if identity not in self._rows]

    def write_chunk(self, identities: Sequence[str], tokens: Tensor) -> None:
        """Commit ``(N, T, C)`` tokens of ``identities`` (rows in order) as one new chunk."""
        if tokens.ndim != 3 or tokens.shape[0] != len(identities):
            raise ValueError(f"Expected ({len(identities)}, T, C) tokens, got shape {tuple(tokens.shape)}")
        array = tokens.detach().to("cpu", torch.float32).numpy().astype(self.dtype)
        name = f"chunk-{uuid.uuid4().hex}"
        identities_file, tokens_file = self.folder / f"{name}.json", self.folder / f"{name}.npy"
        atomic_write_text(identities_file, json.dumps(list(identities)))
        try:
            with atomic_write(tokens_file, "wb") as handle:
                np.save(handle, array)
        except BaseException:
            identities_file.unlink(missing_ok=True)
            raise
        self._index(tokens_file.name, identities)

    def open_chunk(self, chunk: str) -> np.memmap:
        """The chunk's ``(N, T, C)`` tokens, memory-mapped read-only (nothing is read until indexed)."""
        return np.load(self.folder / chunk, mmap_mode="r")

    def read(self, identities: Sequence[str]) -> Tensor:
        """``(N, T, C)`` tokens of ``identities`` in order, in the storage dtype; all must be cached.

        Only the requested rows are read from the memory-mapped chunks.
        """
        absent = [identity for identity in identities if identity not in self._rows]
        if absent:
            raise KeyError(f"{len(absent)} images are not in the token cache {self.folder}, e.g. {absent[0]}")
        by_chunk: dict[str, list[int]] = {}
        for position, identity in enumerate(identities):
            by_chunk.setdefault(self._rows[identity][0], []).append(position)
        out: np.ndarray | None = None
        for chunk, positions in by_chunk.items():
            tokens = self.open_chunk(chunk)
            if out is None:
                out = np.empty((len(identities), *tokens.shape[1:]), dtype=tokens.dtype)
            out[positions] = tokens[[self._rows[identities[position]][1] for position in positions]]
            del tokens
        if out is None:
            raise ValueError("No identities to read")
        return torch.from_numpy(out)
