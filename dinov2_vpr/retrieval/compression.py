"""Smaller descriptors for large maps: PCA (optionally whitened) fitted with faiss on the database.

A fitted :class:`PCA` is plain numpy arrays, saved to and loaded from an ``.npz`` file, so that any
tool (retrieval, the online loop detector) applies the same projection:
``y = L2(projection @ (x - mean))``. Float16 storage is a property of the faiss index
(:func:`dinov2_vpr.retrieval.search.build_index` with ``float16=True``).
"""

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from dinov2_vpr.io import atomic_write

PCA_FILE = "pca.npz"
_TRANSFORM_BATCH = 16384


@dataclass(frozen=True)
class PCA:
    """A fitted PCA of descriptors.

    Attributes:
        mean: ``(D_in,)`` float32 mean of the descriptors it was fitted on.
        projection: ``(D, D_in)`` float32; row ``i`` is the ``i``-th principal direction, divided by
            ``sqrt(eigenvalues[i])`` when ``whiten``.
        eigenvalues: ``(D,)`` float32 variances along the directions, largest first.
        whiten: whether the projection whitens (unit variance per direction on the fitted data).
    """

    mean: np.ndarray
    projection: np.ndarray
    eigenvalues: np.ndarray
    whiten: bool

    @property
    def input_dim(self) -> int:
        """Width of the descriptors it reduces."""
        return self.projection.shape[1]

    @property
    def output_dim(self) -> int:
        """Width of the reduced descriptors."""
        return self.projection.shape[0]

    def project(self, descriptors: np.ndarray) -> np.ndarray:
        """``(N, D_in)`` descriptors to ``(N, D)`` float32 coordinates along the directions, not normalised."""
        descriptors = np.asarray(descriptors)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.input_dim:
            raise ValueError(f"The PCA reduces (N, {self.input_dim}) descriptors; got shape {descriptors.shape}")
        projected = np.empty((len(descriptors), self.output_dim), dtype=np.float32)
        for start in range(0, len(descriptors), _TRANSFORM_BATCH):
            batch = descriptors[start : start + _TRANSFORM_BATCH].astype(np.float32) - self.mean
            projected[start : start + _TRANSFORM_BATCH] = batch @ self.projection.T
        return projected

    def transform(self, descriptors: np.ndarray) -> np.ndarray:
        """``(N, D_in)`` descriptors to ``(N, D)`` float32 L2-normalised reduced descriptors."""
        projected = self.project(descriptors)
        norms = np.linalg.norm(projected, axis=1, keepdims=True)
        return projected / np.maximum(norms, np.finfo(np.float32).tiny)

    def save(self, path: str | Path) -> None:
        """Write ``mean``, ``projection``, ``eigenvalues`` and ``whiten`` to an ``.npz`` file atomically."""
        with atomic_write(path, "wb") as file:
            np.savez(
                file,
                mean=self.mean,
                projection=self.projection,
                eigenvalues=self.eigenvalues,
                whiten=np.array(self.whiten),
            )

    @classmethod
    def load(cls, path: str | Path) -> "PCA":
        """The PCA saved by :meth:`save` (plain arrays; no pickle)."""
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"mean", "projection", "eigenvalues", "whiten"} - set(arrays.files)
            if missing:
                raise ValueError(f"{path} is not a saved PCA: it lacks {sorted(missing)}")
            return cls(
                mean=arrays["mean"].astype(np.float32),
                projection=arrays["projection"].astype(np.float32),
                eigenvalues=arrays["eigenvalues"].astype(np.float32),
                whiten=bool(arrays["whiten"]),
            )


def fit_pca(database: np.ndarray, dim: int, whiten: bool = False, train_size: int | None = None, seed: int = 0) -> PCA:
    """Fit a PCA to ``dim`` dimensions on database descriptors with ``faiss.PCAMatrix``.

    Whitening is faiss's ``eigen_power=-0.5``: each direction is scaled to unit variance on the
    fitted descriptors. With ``train_size`` below the descriptor dimension, faiss decomposes the
    samples' Gram matrix instead of the ``D_in x D_in`` covariance, much faster for 8448-d descriptors.

    Args:
        database: ``(N, D_in)`` descriptors (the database only, never the queries).
        dim: output dimension; ``N`` centred vectors span at most ``N - 1`` dimensions, so it must be
            below the number of fitted vectors, and at most ``D_in``.
        whiten: scale the directions to unit variance.
        train_size: fit on this many database rows drawn at random (default: all of them).
        seed: the draw of the rows.

    Raises:
        ValueError: ``dim`` or ``train_size`` out of range, or not a 2-D array.
    """
    database = np.asarray(database)
    if database.ndim != 2:
        raise ValueError(f"database must be a 2-D array (num_vectors, dim); got shape {database.shape}")
    num_vectors, input_dim = database.shape
    if train_size is not None and not 1 <= train_size:
        raise ValueError(f"train_size must be at least 1; got {train_size}")
    num_train = num_vectors if train_size is None else min(train_size, num_vectors)
    if not 1 <= dim < num_train or dim > input_dim:
        raise ValueError(
            f"PCA dimension {dim} must be at least 1, below the {num_train} descriptors it is fitted on "
            f"and at most the descriptor dimension {input_dim}"
        )
    if num_train < num_vectors:
        rows = np.sort(np.random.default_rng(seed).choice(num_vectors, num_train, replace=False))
        database = database[rows]
    pca_matrix = faiss.PCAMatrix(input_dim, dim, -0.5 if whiten else 0.0, False)
    pca_matrix.train(np.ascontiguousarray(database, dtype=np.float32))
    projection = faiss.vector_to_array(pca_matrix.A).reshape(dim, input_dim)
    # faiss's eigenvalues are those of the scatter matrix (sums of squares, not divided by the count).
    eigenvalues = faiss.vector_to_array(pca_matrix.eigenvalues)[:dim] / num_train
    if whiten:
        projection = projection * np.sqrt(num_train)
    return PCA(
        mean=faiss.vector_to_array(pca_matrix.mean).astype(np.float32),
        projection=projection.astype(np.float32),
        eigenvalues=eigenvalues.astype(np.float32),
        whiten=whiten,
    )
