"""On-disk cache of backbone features.

One folder per setting (backbone weights, model config, preprocessing, precision), named by a hash
of the setting, holding chunk files of features. An image is keyed by its absolute path, size and
modification time, so a changed image is encoded again and an unchanged one never is. Chunks are
written atomically: an interrupted extraction keeps every finished chunk.
"""

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from dinov2_vpr.features.pooling import FEATURE_NAMES
from dinov2_vpr.io import atomic_save_torch, atomic_write_text

logger = logging.getLogger("dinov2")


def image_identity(path: str | Path) -> str:
    """``<absolute path>|<size>|<mtime_ns>``: changes when the file is replaced or rewritten."""
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


def settings_digest(settings: dict) -> str:
    """Short stable hash of a JSON-serialisable settings dict."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class FeatureCache:
    """Features of the images encoded so far under one setting.

    Args:
        root: the cache root (``<output-dir>/feature_cache`` or ``--cache-dir``).
        settings: everything that determines the features (what they are included); its hash names the folder.
        names: the features kept of each image: the pooled backbone features (``FEATURE_NAMES``), or
            a place model's ``("descriptor",)``.
    """

    def __init__(self, root: str | Path, settings: dict, names: Sequence[str] = FEATURE_NAMES) -> None:
        self.names = tuple(names)
        self.folder = Path(root) / settings_digest(settings)
        self.folder.mkdir(parents=True, exist_ok=True)
        settings_file = self.folder / "settings.json"
        if not settings_file.exists():
            atomic_write_text(settings_file, json.dumps(settings, indent=2, sort_keys=True))
        self._rows: dict[str, tuple[dict[str, Tensor], int]] = {}
        self._loaded_chunks: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Read chunk files written since the last call (by this or other processes)."""
        for chunk_file in sorted(self.folder.glob("chunk-*.pt")):
            if chunk_file.name in self._loaded_chunks:
                continue
            chunk = torch.load(chunk_file, map_location="cpu", weights_only=True)
            for row, identity in enumerate(chunk["identities"]):
                self._rows[identity] = (chunk["features"], row)
            self._loaded_chunks.add(chunk_file.name)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, identity: str) -> bool:
        return identity in self._rows

    def write_chunk(self, identities: Sequence[str], features: dict[str, Tensor]) -> None:
        """Commit features of ``identities`` (rows in order) as one new chunk file."""
        features = {name: features[name].detach().cpu().float().contiguous() for name in self.names}
        name = f"chunk-{uuid.uuid4().hex}.pt"
        atomic_save_torch({"identities": list(identities), "features": features}, self.folder / name)
        for row, identity in enumerate(identities):
            self._rows[identity] = (features, row)
        self._loaded_chunks.add(name)

    def load(self, identities: Sequence[str]) -> dict[str, Tensor]:
        """Features of ``identities`` stacked in order, each ``(N, D)``; all must be cached."""
        absent = [identity for identity in identities if identity not in self._rows]
        if absent:
            raise KeyError(f"{len(absent)} images are not in the feature cache {self.folder}, e.g. {absent[0]}")
        return {
            name: torch.stack([self._rows[identity][0][name][self._rows[identity][1]] for identity in identities])
            for name in self.names
        }
