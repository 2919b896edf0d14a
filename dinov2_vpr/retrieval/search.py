"""Nearest-neighbour search of L2-normalised descriptors with faiss (inner product = cosine similarity).

With ``float16`` the index stores each descriptor in half precision (faiss's scalar quantizer
``QT_fp16``: half the memory) and decodes it to float32 while scoring, so the recall measured is
that of float16 storage.
"""

import math

import faiss
import numpy as np

INDEX_KINDS = ("exact", "ivf", "hnsw")
# faiss k-means asks for at least this many training vectors per IVF list (fewer gives poor lists).
MIN_VECTORS_PER_LIST = 39
_NORM_TOLERANCE = 1e-3
_IP = faiss.METRIC_INNER_PRODUCT
_FP16 = faiss.ScalarQuantizer.QT_fp16


def as_descriptors(array: np.ndarray, name: str) -> np.ndarray:
    """Check that ``array`` holds L2-normalised descriptors, one a row; return it as C-contiguous float32.

    Raises:
        ValueError: not a non-empty 2-D array, non-finite values, or rows whose norm is not 1.
    """
    descriptors = np.ascontiguousarray(array, dtype=np.float32)
    if descriptors.ndim != 2 or descriptors.shape[0] == 0 or descriptors.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (num_vectors, dim); got shape {descriptors.shape}")
    if not np.isfinite(descriptors).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    norms = np.linalg.norm(descriptors, axis=1)
    worst = int(np.argmax(np.abs(norms - 1.0)))
    if abs(norms[worst] - 1.0) > _NORM_TOLERANCE:
        raise ValueError(
            f"{name} rows must be L2-normalised (row {worst} has norm {norms[worst]:.4f}); "
            "divide by np.linalg.norm(x, axis=1, keepdims=True) first"
        )
    return descriptors


def default_nlist(num_vectors: int) -> int:
    """IVF list count for a database: about 4·sqrt(N), capped so each list gets enough training vectors."""
    return max(1, min(round(4 * math.sqrt(num_vectors)), num_vectors // MIN_VECTORS_PER_LIST))


def default_nprobe(nlist: int) -> int:
    """IVF lists visited per query: 1/16 of the lists (at least 1), which keeps Recall@1 close to exact."""
    return max(1, math.ceil(nlist / 16))


def build_index(
    database: np.ndarray,
    kind: str = "exact",
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int = 128,
    ef_construction: int = 80,
    float16: bool = False,
) -> faiss.Index:
    """Inner-product faiss index holding ``database``.

    Args:
        database: ``(N, D)`` L2-normalised descriptors.
        kind: ``"exact"`` (flat, brute force), ``"ivf"`` (inverted lists trained on the database by
            k-means) or ``"hnsw"`` (graph).
        nlist: IVF lists; default `default_nlist` of N. Needs ``N >= 39 * nlist``.
        nprobe: IVF lists searched per query; default `default_nprobe` of nlist.
        hnsw_m: HNSW neighbours per node.
        ef_search: HNSW candidate list size at search time (larger: slower, closer to exact).
        ef_construction: HNSW candidate list size while building.
        float16: store the descriptors in float16 (``QT_fp16``) instead of float32.

    Raises:
        ValueError: unknown kind, invalid descriptors, or too few vectors to train the IVF lists.
    """
    database = as_descriptors(database, "database descriptors")
    num_vectors, dim = database.shape
    if kind == "exact":
        index = faiss.IndexScalarQuantizer(dim, _FP16, _IP) if float16 else faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        if num_vectors < MIN_VECTORS_PER_LIST:
            raise ValueError(
                f"An IVF index needs at least {MIN_VECTORS_PER_LIST} database vectors to train; "
                f"got {num_vectors}. Use kind='exact' for so small a database"
            )
        nlist = default_nlist(num_vectors) if nlist is None else nlist
        if nlist < 1 or num_vectors < MIN_VECTORS_PER_LIST * nlist:
            raise ValueError(
                f"nlist={nlist} needs at least {MIN_VECTORS_PER_LIST} * nlist = {MIN_VECTORS_PER_LIST * max(nlist, 1)} "
                f"database vectors to train; got {num_vectors}. Lower nlist (or leave it unset for "
                f"{default_nlist(num_vectors)}) or use kind='exact'"
            )
        nprobe = default_nprobe(nlist) if nprobe is None else nprobe
        if nprobe < 1:
            raise ValueError(f"nprobe must be at least 1; got {nprobe}")
        index = faiss.index_factory(dim, f"IVF{nlist},{'SQfp16' if float16 else 'Flat'}", _IP)
        if float16:
            index.by_residual = False  # store the descriptors themselves in float16, as the other kinds do
        index.train(database)
        index.nprobe = min(nlist, nprobe)
    elif kind == "hnsw":
        if hnsw_m < 2 or ef_search < 1 or ef_construction < 1:
            raise ValueError(
                f"HNSW needs hnsw_m >= 2, ef_search >= 1, ef_construction >= 1; "
                f"got {hnsw_m}, {ef_search}, {ef_construction}"
            )
        index = faiss.IndexHNSWSQ(dim, _FP16, hnsw_m, _IP) if float16 else faiss.IndexHNSWFlat(dim, hnsw_m, _IP)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"Unknown index kind {kind!r}; choose one of {INDEX_KINDS}")
    index.add(database)
    return index


def stores_float16(index: faiss.Index) -> bool:
    """Whether an index made by `build_index` stores its descriptors in float16."""
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    return isinstance(index, (faiss.IndexScalarQuantizer, faiss.IndexIVFScalarQuantizer))


def describe_index(index: faiss.Index) -> dict[str, int | str]:
    """Kind and search settings of an index made by `build_index` (``storage: float16`` if so), for logs and reports."""
    if isinstance(index, faiss.IndexIVF):
        described = {"kind": "ivf", "size": index.ntotal, "nlist": index.nlist, "nprobe": index.nprobe}
    elif isinstance(index, faiss.IndexHNSW):
        described = {
            "kind": "hnsw",
            "size": index.ntotal,
            "hnsw_m": index.hnsw.nb_neighbors(1),
            "ef_search": index.hnsw.efSearch,
            "ef_construction": index.hnsw.efConstruction,
        }
    else:
        described = {"kind": "exact", "size": index.ntotal}
    if stores_float16(index):
        described["storage"] = "float16"
    return described


def search(index: faiss.Index, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database rows for each query, searched ``batch_size`` queries at a time.

    Args:
        index: an index from `build_index`.
        queries: ``(Q, D)`` L2-normalised descriptors.
        k: results per query, at most the database size.
        batch_size: queries per faiss call (bounds the memory of one call).

    Returns:
        ``(scores, indices)``, both ``(Q, k)``, best first: float32 cosine similarities and int64
        database rows. An approximate index that finds fewer than ``k`` results pads with row -1
        (score -inf).

    Raises:
        ValueError: invalid queries, a dimension mismatch, or ``k`` out of range.
    """
    queries = as_descriptors(queries, "query descriptors")
    if queries.shape[1] != index.d:
        raise ValueError(f"Query descriptors have dimension {queries.shape[1]} but the index holds dimension {index.d}")
    if not 1 <= k <= index.ntotal:
        raise ValueError(f"k must be between 1 and the database size {index.ntotal}; got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        stop = start + batch_size
        scores[start:stop], indices[start:stop] = index.search(queries[start:stop], k)
    scores[indices < 0] = -np.inf
    return scores, indices
