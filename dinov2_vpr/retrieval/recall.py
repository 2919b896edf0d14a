"""Recall@K of place retrieval: a query is answered when a top-K result lies within a radius of it."""

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

from dinov2_vpr.io import atomic_write
from dinov2_vpr.retrieval.compression import PCA
from dinov2_vpr.retrieval.search import build_index, describe_index, search


def _as_positions(xy: np.ndarray, name: str) -> np.ndarray:
    positions = np.asarray(xy, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] < 2 or not np.isfinite(positions).all():
        raise ValueError(f"{name} must be a finite (num_images, 2) array of positions; got shape {positions.shape}")
    return positions


def positives_within(database_xy: np.ndarray, query_xy: np.ndarray, radius: float) -> list[np.ndarray]:
    """For each query, the database rows within ``radius`` (inclusive) of it, sorted, as int64 arrays."""
    if not radius > 0:
        raise ValueError(f"radius must be positive; got {radius}")
    database_xy = _as_positions(database_xy, "database positions")
    query_xy = _as_positions(query_xy, "query positions")
    if database_xy.shape[1] != query_xy.shape[1]:
        raise ValueError(f"database positions have {database_xy.shape[1]} coordinates, queries {query_xy.shape[1]}")
    neighbours = NearestNeighbors(radius=radius).fit(database_xy)
    found = neighbours.radius_neighbors(query_xy, return_distance=False)
    return [np.sort(rows).astype(np.int64) for rows in found]


def is_positive(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """``(Q, K)`` bool: is ``predictions[q, r]`` one of ``positives[q]`` (row -1, no result, never is)."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or not np.issubdtype(predictions.dtype, np.integer):
        raise ValueError(
            f"predictions must be a 2-D integer array (queries, K); got {predictions.dtype} {predictions.shape}"
        )
    if len(positives) != len(predictions):
        raise ValueError(f"{len(positives)} positive lists for {len(predictions)} queries")
    positive_rows = [np.asarray(rows, dtype=np.int64).ravel() for rows in positives]
    # One integer key per (query, database row) pair turns the per-query membership test into one np.isin.
    largest_row = max([int(predictions.max(initial=0))] + [int(rows.max(initial=0)) for rows in positive_rows])
    width = largest_row + 1
    query_rows = np.arange(len(predictions), dtype=np.int64)
    positive_keys = np.concatenate(
        [np.empty(0, dtype=np.int64)]
        + [query * width + rows for query, rows in zip(query_rows, positive_rows, strict=True)]
    )
    prediction_keys = query_rows[:, None] * width + predictions.astype(np.int64)
    return np.isin(prediction_keys, positive_keys) & (predictions >= 0)


def recall_at_k(predictions: np.ndarray, positives: Sequence[np.ndarray], k_values: Sequence[int]) -> dict[int, float]:
    """Fraction of queries (in [0, 1]) with at least one positive among their top-K predictions.

    Every query counts, so a query with no positive at all is a miss at every K (as in the usual
    VPR benchmarks).

    Args:
        predictions: ``(Q, maxK)`` database rows, best first.
        positives: per query, the database rows that count as correct.
        k_values: the K to report, each between 1 and ``maxK``.

    Returns:
        ``{K: recall}``.
    """
    hits = is_positive(predictions, positives)
    for k in k_values:
        if not 1 <= k <= hits.shape[1]:
            raise ValueError(f"K={k} is outside 1..{hits.shape[1]} (the number of predictions per query)")
    found_by_rank = np.logical_or.accumulate(hits, axis=1)
    return {int(k): float(found_by_rank[:, k - 1].mean()) for k in k_values}


@dataclass
class RetrievalResult:
    """Outcome of `evaluate_retrieval`.

    Attributes:
        recalls: ``{K: fraction of queries answered}`` with the chosen index.
        predictions: ``(Q, maxK)`` int64 database rows, best first.
        scores: ``(Q, maxK)`` float32 cosine similarities of the predictions.
        positives: per query, the database rows within the radius.
        index: `describe_index` of the index searched.
        build_seconds: time to build (and train) the index.
        search_seconds: time to search all queries.
        exact_recalls: for an approximate index, the recalls of an exact search.
        recall_loss: for an approximate index, ``exact_recalls[K] - recalls[K]``.
        exact_build_seconds: for an approximate index, the exact index's build time.
        exact_search_seconds: for an approximate index, the exact search time.
        compression: with PCA or float16 storage, ``{"descriptor_dim", "pca_dim", "pca_whiten", "float16"}``
            (the full width; the PCA's output width and whitening, None without PCA; float16 storage).
        full_recalls: with compression, the recalls of an exact float32 search of the full descriptors.
        full_recall_loss: with compression, ``full_recalls[K] - recalls[K]`` (everything lost
            against the full descriptors: compression, and approximation if the index is approximate).
        full_build_seconds: with compression, the full exact index's build time.
        full_search_seconds: with compression, the full exact search time.
    """

    recalls: dict[int, float]
    predictions: np.ndarray
    scores: np.ndarray
    positives: list[np.ndarray]
    index: dict[str, int | str]
    build_seconds: float
    search_seconds: float
    exact_recalls: dict[int, float] | None = None
    recall_loss: dict[int, float] | None = None
    exact_build_seconds: float | None = None
    exact_search_seconds: float | None = None
    compression: dict[str, int | bool | None] | None = None
    full_recalls: dict[int, float] | None = None
    full_recall_loss: dict[int, float] | None = None
    full_build_seconds: float | None = None
    full_search_seconds: float | None = None

    def summary(self) -> dict[str, float | int | str]:
        """Flat JSON-ready metrics: ``R@K`` (fractions), counts, index settings and timings."""
        summary: dict[str, float | int | str] = {f"R@{k}": recall for k, recall in self.recalls.items()}
        summary["queries"] = len(self.positives)
        summary["queries_without_positives"] = sum(len(rows) == 0 for rows in self.positives)
        summary.update({f"index_{key}": value for key, value in self.index.items()})
        summary["build_seconds"] = self.build_seconds
        summary["search_seconds"] = self.search_seconds
        if self.exact_recalls is not None and self.recall_loss is not None:
            summary.update({f"exact_R@{k}": recall for k, recall in self.exact_recalls.items()})
            summary.update({f"recall_loss@{k}": loss for k, loss in self.recall_loss.items()})
            summary["exact_build_seconds"] = self.exact_build_seconds
            summary["exact_search_seconds"] = self.exact_search_seconds
        if self.compression is not None and self.full_recalls is not None and self.full_recall_loss is not None:
            summary.update(self.compression)
            summary.update({f"full_R@{k}": recall for k, recall in self.full_recalls.items()})
            summary.update({f"full_recall_loss@{k}": loss for k, loss in self.full_recall_loss.items()})
            summary["full_build_seconds"] = self.full_build_seconds
            summary["full_search_seconds"] = self.full_search_seconds
        return summary


def _timed_search(
    database_desc: np.ndarray, query_desc: np.ndarray, k: int, kind: str, index_params: dict
) -> tuple[np.ndarray, np.ndarray, dict[str, int | str], float, float]:
    started = time.perf_counter()
    index = build_index(database_desc, kind, **index_params)
    built = time.perf_counter()
    scores, predictions = search(index, query_desc, k)
    return scores, predictions, describe_index(index), built - started, time.perf_counter() - built


def evaluate_retrieval(
    database_desc: np.ndarray,
    query_desc: np.ndarray,
    database_xy: np.ndarray,
    query_xy: np.ndarray,
    k_values: Sequence[int] = (1, 5, 10, 20),
    radius: float = 25.0,
    index_kind: str = "exact",
    pca: PCA | None = None,
    float16: bool = False,
    **index_params,
) -> RetrievalResult:
    """Recall@K of retrieving database images for queries by cosine similarity of descriptors.

    Args:
        database_desc: ``(N, D)`` L2-normalised database descriptors.
        query_desc: ``(Q, D)`` L2-normalised query descriptors.
        database_xy: ``(N, 2)`` database positions (e.g. UTM metres).
        query_xy: ``(Q, 2)`` query positions.
        k_values: the K to report; the largest must not exceed N.
        radius: a result within this distance of the query is correct (25 m in the VPR benchmarks).
        index_kind: ``"exact"``, ``"ivf"`` or ``"hnsw"``; an approximate kind is also compared with exact
            search of the same (reduced, float16) descriptors.
        pca: a PCA fitted on the database (:func:`~dinov2_vpr.retrieval.compression.fit_pca`): both
            sides are searched reduced.
        float16: the index stores the (reduced) descriptors in float16.
        **index_params: passed to `build_index` (nlist, nprobe, hnsw_m, ef_search, ef_construction).
    """
    k_values = sorted({int(k) for k in k_values})
    if not k_values or k_values[0] < 1:
        raise ValueError(f"k_values must be positive integers; got {k_values}")
    if len(database_desc) != len(database_xy) or len(query_desc) != len(query_xy):
        raise ValueError(
            f"descriptor and position counts differ: database {len(database_desc)} vs {len(database_xy)}, "
            f"queries {len(query_desc)} vs {len(query_xy)}"
        )
    max_k = k_values[-1]
    if max_k > len(database_desc):
        raise ValueError(f"K={max_k} exceeds the database size {len(database_desc)}; pass smaller k_values")
    positives = positives_within(database_xy, query_xy, radius)
    searched_database, searched_queries = (
        (pca.transform(database_desc), pca.transform(query_desc)) if pca is not None else (database_desc, query_desc)
    )
    scores, predictions, index, build_seconds, search_seconds = _timed_search(
        searched_database, searched_queries, max_k, index_kind, {**index_params, "float16": float16}
    )
    result = RetrievalResult(
        recalls=recall_at_k(predictions, positives, k_values),
        predictions=predictions,
        scores=scores,
        positives=positives,
        index=index,
        build_seconds=build_seconds,
        search_seconds=search_seconds,
    )
    if index_kind != "exact":
        _, exact_predictions, _, result.exact_build_seconds, result.exact_search_seconds = _timed_search(
            searched_database, searched_queries, max_k, "exact", {"float16": float16}
        )
        result.exact_recalls = recall_at_k(exact_predictions, positives, k_values)
        result.recall_loss = {k: result.exact_recalls[k] - result.recalls[k] for k in k_values}
    if pca is not None or float16:
        _, full_predictions, _, result.full_build_seconds, result.full_search_seconds = _timed_search(
            database_desc, query_desc, max_k, "exact", {}
        )
        result.full_recalls = recall_at_k(full_predictions, positives, k_values)
        result.full_recall_loss = {k: result.full_recalls[k] - result.recalls[k] for k in k_values}
        result.compression = {
            "descriptor_dim": int(np.shape(database_desc)[1]),
            "pca_dim": pca.output_dim if pca is not None else None,
            "pca_whiten": pca.whiten if pca is not None else None,
            "float16": float16,
        }
    return result


def write_predictions_csv(
    path: str | Path,
    query_paths: Sequence[str | Path],
    database_paths: Sequence[str | Path],
    predictions: np.ndarray,
    scores: np.ndarray,
    positives: Sequence[np.ndarray],
) -> None:
    """Write one CSV row per query: its path, its number of positives, then for each rank the
    database path, the score and whether it is a positive (1/0). A missing result (row -1) leaves
    the path and score empty. Written atomically.
    """
    hits = is_positive(predictions, positives)
    if scores.shape != predictions.shape or len(query_paths) != len(predictions):
        raise ValueError(
            f"{len(query_paths)} query paths, predictions {predictions.shape} and scores {scores.shape} do not match"
        )
    if predictions.max(initial=-1) >= len(database_paths):
        raise ValueError(
            f"predictions refer to database row {predictions.max()} but there are {len(database_paths)} paths"
        )
    header = ["query", "num_positives"]
    for rank in range(1, predictions.shape[1] + 1):
        header += [f"rank{rank}_database", f"rank{rank}_score", f"rank{rank}_positive"]
    with atomic_write(path, "w") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(header)
        for query, rows, row_scores, row_hits, query_positives in zip(
            query_paths, predictions, scores, hits, positives, strict=True
        ):
            line = [str(query), len(query_positives)]
            for row, score, hit in zip(rows, row_scores, row_hits, strict=True):
                found = row >= 0
                line += [str(database_paths[row]) if found else "", f"{score:.6f}" if found else "", int(hit)]
            writer.writerow(line)
