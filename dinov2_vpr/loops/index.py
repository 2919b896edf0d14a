"""The search index of a growing map: exact, HNSW, or IVF (searched exactly until it has trained).

Rows are added in order and never removed, so row ``r`` of the index is the ``r``-th frame added.
The faiss indexes are those of :func:`dinov2_vpr.retrieval.search.build_index`.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from dinov2.utils.errors import InputError
from dinov2_vpr.retrieval.search import INDEX_KINDS, MIN_VECTORS_PER_LIST, build_index, describe_index, search

# An IVF index trains on the map's first ``TRAIN_VECTORS_PER_LIST * nlist`` frames.
TRAIN_VECTORS_PER_LIST = 64


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run faiss on this thread alone: for one vector, waiting for a second OpenMP thread on a busy machine
    costs milliseconds (a scheduler time slice), more than the work itself."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


@dataclass(frozen=True)
class IndexSettings:
    """How the map is searched.

    Attributes:
        kind: ``exact`` (brute force), ``hnsw`` (graph) or ``ivf`` (inverted lists; exact search
            until the map holds ``64 * nlist`` frames, then trained once on them).
        hnsw_m: HNSW neighbours per node.
        ef_search: HNSW candidate list size at search time (larger: slower, closer to exact).
        ef_construction: HNSW candidate list size while inserting.
        nlist: IVF lists.
        nprobe: IVF lists searched per query (at most nlist).
    """

    kind: str = "exact"
    hnsw_m: int = 32
    ef_search: int = 256  # with ef_construction 100: every exact candidate at 1M frames (see the README)
    ef_construction: int = 100
    nlist: int = 1024
    nprobe: int = 64

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise InputError(f"Unknown index kind {self.kind!r}; choose one of {', '.join(INDEX_KINDS)}")
        if self.hnsw_m < 2 or self.ef_search < 1 or self.ef_construction < 1:
            raise InputError(
                f"HNSW needs hnsw_m >= 2, ef_search >= 1 and ef_construction >= 1; "
                f"got {self.hnsw_m}, {self.ef_search}, {self.ef_construction}"
            )
        if self.nlist < 1 or self.nprobe < 1:
            raise InputError(f"IVF needs nlist >= 1 and nprobe >= 1; got nlist {self.nlist}, nprobe {self.nprobe}")

    @property
    def train_size(self) -> int:
        """Frames an IVF index waits for before it trains (at least faiss's minimum per list)."""
        return max(TRAIN_VECTORS_PER_LIST, MIN_VECTORS_PER_LIST) * self.nlist

    def to_dict(self) -> dict:
        return asdict(self)


class GrowingIndex:
    """An inner-product faiss index that rows are appended to one at a time or in blocks.

    Args:
        settings: the kind of index and its parameters.
        index: a faiss index to continue from (as written by :meth:`serialize`), or None for an empty one.
    """

    def __init__(self, settings: IndexSettings, index: faiss.Index | None = None) -> None:
        self.settings = settings
        self._index = index

    @property
    def size(self) -> int:
        """Rows held."""
        return 0 if self._index is None else self._index.ntotal

    @property
    def trained(self) -> bool:
        """False only for an IVF index that still searches exactly."""
        return self.settings.kind != "ivf" or isinstance(self._index, faiss.IndexIVF)

    def add(self, vectors: np.ndarray) -> None:
        """Append ``(n, D)`` unit descriptors as the next rows; an IVF index trains once it holds enough."""
        if len(vectors) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._index is None:  # faiss indexes start from a first row; an IVF index searches exactly until trained
            self._index = self._build(vectors[:1], "exact" if self.settings.kind == "ivf" else self.settings.kind)
            vectors = vectors[1:]
        train_size = self.settings.train_size
        if not self.trained and self.size + len(vectors) >= train_size:
            rows = np.concatenate([self._index.reconstruct_n(0, self.size), vectors])
            self._index = self._build(rows[:train_size], "ivf")
            vectors = rows[train_size:]
        if len(vectors) == 1:
            with _one_thread():
                self._index.add(vectors)
        elif len(vectors):
            self._index.add(vectors)

    def _build(self, vectors: np.ndarray, kind: str) -> faiss.Index:
        settings = self.settings
        return build_index(
            vectors,
            kind,
            nlist=settings.nlist,
            nprobe=settings.nprobe,
            hnsw_m=settings.hnsw_m,
            ef_search=settings.ef_search,
            ef_construction=settings.ef_construction,
        )

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` (at most :attr:`size`) most similar rows to a ``(D,)`` unit descriptor, best first.

        Returns:
            ``(similarities, rows)``: float32 and int64 arrays; an approximate index may return fewer.
        """
        with _one_thread():
            similarities, rows = search(self._index, query[None], min(k, self.size))
        found = rows[0] >= 0
        return similarities[0][found], rows[0][found]

    def describe(self) -> dict:
        """The settings, and the faiss index's kind and size (``exact`` for an IVF index not yet trained)."""
        held = describe_index(self._index) if self._index is not None else {"kind": "exact", "size": 0}
        return {"settings": self.settings.to_dict(), "searching": held}

    def serialize(self) -> np.ndarray:
        """The faiss index as bytes (uint8; empty for an empty index)."""
        return np.zeros(0, np.uint8) if self._index is None else faiss.serialize_index(self._index)

    @classmethod
    def deserialize(cls, settings: IndexSettings, data: np.ndarray) -> "GrowingIndex":
        """The index written by :meth:`serialize`."""
        return cls(settings, faiss.deserialize_index(data) if len(data) else None)
